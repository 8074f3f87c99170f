"""Face data: one idea a file.

``attributes`` (the columns a run conditions on, CelebA's names or a folder's), ``labels`` (a
folder's own labels, from a CSV beside the images), ``images`` (decode, crop,
resize, uint8 <-> float), ``datamodule`` (the DataModule, which takes a ``Source`` of images,
and its resumable sampler), the sources ``celeba`` (CelebA's layout), ``folders`` (any image
folder) and ``synthetic`` (drawn faces, no download), and ``prepared`` (uint8 arrays built
once, memory-mapped). ``CelebADataModule`` and its two siblings are a FaceDataModule with
their source built from their own arguments, as the configs name them.
"""

from lightning_faces.data.attributes import (
    CELEBA_ATTRIBUTES,
    parse_attribute_names,
    parse_attribute_values,
    select_attributes,
)
from lightning_faces.data.celeba import CelebA, CelebADataModule, CelebAFaces
from lightning_faces.data.datamodule import EpochSampler, FaceDataModule, Source, Split
from lightning_faces.data.folders import FolderFaces, ImageFolder, ImageFolderDataModule
from lightning_faces.data.images import to_float, to_uint8
from lightning_faces.data.synthetic import DrawnFaces, SyntheticFacesDataModule

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebA",
    "CelebADataModule",
    "CelebAFaces",
    "DrawnFaces",
    "EpochSampler",
    "FaceDataModule",
    "FolderFaces",
    "ImageFolder",
    "ImageFolderDataModule",
    "Source",
    "SyntheticFacesDataModule",
    "Split",
    "to_float",
    "parse_attribute_values",
    "parse_attribute_names",
    "select_attributes",
    "to_uint8",
]
