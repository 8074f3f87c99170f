"""Train GANs on faces (CelebA, image folders, or built-in drawn faces) with PyTorch Lightning."""

from lightning_faces.data import CelebADataModule, FaceDataModule, ImageFolderDataModule, SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.generator import FaceGenerator, load_generator
from lightning_faces.module import GAN

__all__ = [
    "GAN",
    "CelebADataModule",
    "FaceDataModule",
    "FaceGenerator",
    "FacesError",
    "ImageFolderDataModule",
    "SyntheticFacesDataModule",
    "load_generator",
]
__version__ = "0.5.1"
