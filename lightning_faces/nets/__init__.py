"""Generators and discriminators: plain ``nn.Module``s, one family per file (see ``contract``)."""

from lightning_faces.nets.contract import Scores
from lightning_faces.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from lightning_faces.nets.progressive import ProgressiveDiscriminator, ProgressiveGenerator
from lightning_faces.nets.r3gan import R3GANDiscriminator, R3GANGenerator
from lightning_faces.nets.resnet import ResNetDiscriminator, ResNetGenerator

__all__ = [
    "Scores",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ProgressiveDiscriminator",
    "ProgressiveGenerator",
    "R3GANDiscriminator",
    "R3GANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
]
