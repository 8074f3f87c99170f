"""Train GANs on faces (CelebA, image folders, or built-in drawn faces) with PyTorch Lightning."""

from lightning_faces.data import CelebADataModule, FaceDataModule, ImageFolderDataModule, SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN

__all__ = [
    "GAN",
    "CelebADataModule",
    "FaceDataModule",
    "FacesError",
    "ImageFolderDataModule",
    "SyntheticFacesDataModule",
]
__version__ = "0.3.0"
