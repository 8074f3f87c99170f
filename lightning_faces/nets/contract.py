"""What every generator and discriminator promises the GAN, whatever its architecture.

- ``G(z, labels=None) -> images``: latents (B, G.latent_dim) to images (B, 3, S, S) in [-1, 1],
  with ``G.latent_dim``, ``G.image_size`` and ``G.attributes`` (names, empty if unconditional).
- ``G.stem(z, labels=None) -> features`` and ``G.synthesize(features) -> images``, with
  ``G(z, labels) == G.synthesize(G.stem(z, labels))``: the split at the end of G's first block,
  where truncation pulls faces toward the average face (``generator.FaceGenerator.render``).
- ``D(x, labels=None) -> Scores(logits, features, attribute_logits)``: images (B, 3, S, S) to
  real/fake scores (B,), the activations (B, ...) of one hidden layer, which feature matching
  compares, and, for a D with an auxiliary classifier, attribute logits (B, A) (else None).

``labels`` (B, A) in {0, 1} are the attributes a conditional network is given (CelebA's, in the
order of its ``attributes``); unconditional ones ignore them. The networks are plain
``nn.Module``s with no Lightning inside, chosen in YAML by ``class_path``; the CLI links
``data.image_size`` and ``data.attributes`` into both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lightning_faces.errors import FacesError


def check_image_size(image_size: int, networks: str) -> int:
    """Returns log2(image_size); raises FacesError unless it is a power of two >= 16."""
    depth = int(round(math.log2(image_size))) if image_size > 0 else 0
    if image_size < 16 or 2**depth != image_size:
        raise FacesError(
            f"image_size {image_size} is not supported by {networks}: use a power of two from 16 up (32, 64, 128, ...)"
        )
    return depth


class Scores(NamedTuple):
    """What D says about a batch of images."""

    logits: torch.Tensor  # (B,) real/fake scores
    features: torch.Tensor  # (B, ...) one hidden layer's activations (feature matching)
    attribute_logits: torch.Tensor | None = None  # (B, A) from an auxiliary classifier
