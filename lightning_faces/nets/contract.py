"""What every generator and discriminator promises the GAN, whatever its architecture.

- ``G(z, labels=None) -> images``: latents (B, G.latent_dim) to images (B, 3, S, S) in [-1, 1],
  with ``G.latent_dim`` and ``G.image_size`` attributes.
- ``D(x, labels=None) -> (logits, features)``: images (B, 3, S, S) to real/fake scores (B,),
  and the activations (B, ...) of one hidden layer, which feature matching compares.

``labels`` is for conditional networks (CelebA's attributes); unconditional ones ignore it. The
networks are plain ``nn.Module``s with no Lightning inside, chosen in YAML by ``class_path``;
the CLI links ``data.image_size`` into both.
"""

from __future__ import annotations

import math

from lightning_faces.errors import FacesError


def check_image_size(image_size: int, networks: str) -> int:
    """Returns log2(image_size); raises FacesError unless it is a power of two >= 16."""
    depth = int(round(math.log2(image_size))) if image_size > 0 else 0
    if image_size < 16 or 2**depth != image_size:
        raise FacesError(
            f"image_size {image_size} is not supported by {networks}: use a power of two from 16 up (32, 64, 128, ...)"
        )
    return depth
