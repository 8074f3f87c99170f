"""Face data: one idea a file.

``attributes`` (CelebA's names, the columns a run conditions on), ``images`` (decode, crop,
resize, uint8 <-> float), ``datamodule`` (the base DataModule and its resumable sampler),
``celeba`` (CelebA's layout), ``folders`` (any image folder), ``synthetic`` (drawn faces, no
download) and ``prepared`` (uint8 arrays built once, memory-mapped).
"""

from lightning_faces.data.attributes import CELEBA_ATTRIBUTES, parse_attribute_values, select_attributes
from lightning_faces.data.celeba import CelebA, CelebADataModule
from lightning_faces.data.datamodule import EpochSampler, FaceDataModule, Split
from lightning_faces.data.folders import ImageFolder, ImageFolderDataModule
from lightning_faces.data.images import to_float, to_uint8
from lightning_faces.data.synthetic import SyntheticFacesDataModule

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebA",
    "CelebADataModule",
    "EpochSampler",
    "FaceDataModule",
    "ImageFolder",
    "ImageFolderDataModule",
    "SyntheticFacesDataModule",
    "Split",
    "to_float",
    "parse_attribute_values",
    "select_attributes",
    "to_uint8",
]
