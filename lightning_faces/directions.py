"""Directions in an unconditional generator's latent space: what its page's sliders move along.

- ``principal_directions``: the directions along which its faces vary most, found from the
  generator alone (GANSpace), "direction 1", "direction 2", ...
- ``latent_directions``: one named direction per attribute an attribute classifier separates
  in its faces (InterFaceGAN).
- ``slider_directions``: both, as ``serve`` shows them and ``generate --character`` renders them.

Each is a function of the weights (and the classifier) computed on the generator's device: the
same model on the same kind of device gives the same sliders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from lightning_faces.classifier import AttributeClassifier

PRINCIPAL_SLIDERS = 6  # principal directions an unconditional model's page shows
CLASSIFIER_SAMPLES = 2000  # faces the classifier labels to find named directions


@torch.no_grad()
def latent_directions(
    generator: Any, classifier: AttributeClassifier, count: int = 2000, seed: int = 0, min_share: float = 0.05
) -> dict[str, torch.Tensor]:
    """One unit direction per attribute in an unconditional generator's latent space (InterFaceGAN).

    Renders ``count`` seeded latents, lets the classifier label each face, and takes, per
    attribute, the difference between the mean latent of the faces it calls positive and of the
    rest: for N(0, I) latents that is the normal of the best separating plane under equal
    covariances (linear discriminant analysis). Attributes with fewer than ``min_share`` of the
    faces on either side get no direction: their estimate would be noise.
    """
    rng = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, generator.latent_dim, generator=rng)
    classifier = classifier.to(generator.device).eval()
    probabilities = torch.cat(
        [torch.sigmoid(classifier(generator(latents[i : i + 250]).float())).cpu() for i in range(0, count, 250)]
    )
    directions = {}
    for column, name in enumerate(classifier.attribute_names):
        positive = probabilities[:, column] > 0.5
        share = float(positive.float().mean())
        if min(share, 1 - share) < min_share or positive.all() or not positive.any():
            continue
        direction = latents[positive].mean(0) - latents[~positive].mean(0)
        directions[name] = direction / direction.norm()
    return directions


@torch.no_grad()
def principal_directions(generator: Any, count: int = 8, samples: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` unit directions in the latent space along which the generator's faces vary most
    (GANSpace, Harkonen et al. 2020), named "direction 1", "direction 2", ... by decreasing variance.

    PCA of G's first-block activations (``stem``, the layer truncation works in) over ``samples``
    seeded latents gives the main axes of variation there; each is taken back to the latent space
    by regressing the latents on their PCA coordinates (least squares), as GANSpace does for
    generators without a mapping network. No classifier is needed: every model gets sliders.
    Each direction's sign is fixed (its largest entry positive), so a model's sliders do not depend
    on the linear algebra library's choice of sign.
    """
    rng = torch.Generator().manual_seed(seed)
    latents = torch.randn(samples, generator.latent_dim, generator=rng)
    stem = generator.network.stem
    features = torch.cat([stem(part.to(generator.device)).flatten(1).float().cpu() for part in latents.split(250)])
    centred = features - features.mean(0)
    count = min(count, samples - 1, centred.shape[1])
    # the PCA coordinates from the samples' Gram matrix (samples x samples): its size does not grow
    # with G's width, as the features' covariance would
    variances, vectors = torch.linalg.eigh((centred @ centred.T).double())
    top = variances.argsort(descending=True)[:count]
    coordinates = vectors[:, top] * variances[top].clamp_min(0).sqrt()  # (samples, count)
    back = torch.linalg.lstsq(coordinates, latents.double()).solution  # (count, latent_dim): axis k in z
    directions = {}
    for k, row in enumerate(back):
        row = row / row.norm()
        directions[f"direction {k + 1}"] = (row * row[row.abs().argmax()].sign()).float()
    return directions


def slider_directions(generator: Any, classifier: str | Path | None = None) -> dict[str, torch.Tensor]:
    """An unconditional generator's sliders, as ``serve`` shows them and ``generate --character``
    renders them: its principal directions, then, given an attribute classifier checkpoint, one
    named direction per attribute it finds (both deterministic for a given generator)."""
    directions = principal_directions(generator, PRINCIPAL_SLIDERS)
    if classifier:
        from lightning_faces.control import load_judge  # the classifier's checks and errors

        judge, _ = load_judge(classifier, ())
        if judge.image_size != generator.image_size:
            print(
                f"note: the classifier sees {judge.image_size}px faces, the generator makes "
                f"{generator.image_size}px; faces are resized for it",
                file=sys.stderr,
            )
        directions |= latent_directions(generator, judge, count=CLASSIFIER_SAMPLES)
    return directions
