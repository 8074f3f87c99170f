"""Train GANs on faces (CelebA, image folders, or built-in drawn faces) with PyTorch Lightning."""

from lightning_faces.data import CelebADataModule, FaceDataModule, ImageFolderDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from lightning_faces.synthetic import SyntheticFacesDataModule

__all__ = [
    "GAN",
    "CelebADataModule",
    "FaceDataModule",
    "FacesError",
    "ImageFolderDataModule",
    "SyntheticFacesDataModule",
]
__version__ = "0.2.0"
