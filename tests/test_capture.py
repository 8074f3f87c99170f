"""The iteration written for CUDA-graph capture (``model.cuda_graph``, issue 26).

On a CPU it runs eagerly, so these tests check what capture relies on: the same weights as the
eager ``training_step`` over several iterations (bit for bit: the same arithmetic in the same
order), Lightning counting its iterations, and one-line refusals of what it does not run. The
capture itself needs a GPU (the ``gpu`` test).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_faces import objectives, regularizers
from lightning_faces.augment import DiffAugment
from lightning_faces.checkpoint import SafeCheckpointIO
from lightning_faces.data import SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.module import GAN
from lightning_faces.nets import DCGANDiscriminator, DCGANGenerator, R3GANDiscriminator, R3GANGenerator
from lightning_faces.schedules import Cosine
from tests.test_module import adam_steps

ATTRIBUTES = ["Smiling", "Bald"]


def gan(nets: str = "dcgan", attributes: list[str] | None = None, **settings) -> GAN:
    torch.manual_seed(0)
    names = {"attributes": attributes} if attributes else {}
    if nets == "r3gan":
        sizes = {"width": 8, "blocks": 1, "expansion": 1, "group_size": 8, "image_size": 16}
        generator = R3GANGenerator(latent_dim=8, **sizes, **names)
        discriminator = R3GANDiscriminator(**sizes, **names)
    else:
        generator = DCGANGenerator(latent_dim=8, width=4, image_size=16, **names)
        discriminator = DCGANDiscriminator(width=4, image_size=16, **names)
    return GAN(generator, discriminator, num_fixed_samples=4, **settings)


def data(attributes: list[str] | None = None) -> SyntheticFacesDataModule:
    names = {"attributes": attributes} if attributes else {}
    return SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8, **names)


def train(
    model: GAN, steps: int, device: str = "cpu", attributes: list[str] | None = None, precision: str = "32-true"
) -> L.Trainer:
    trainer = L.Trainer(
        accelerator=device,
        precision=precision,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[SafeCheckpointIO()],
    )
    trainer.fit(model, data(attributes))
    return trainer


def trained(steps: int = 6, device: str = "cpu", precision: str = "32-true", **settings) -> tuple[GAN, L.Trainer]:
    L.seed_everything(0, verbose=False)
    model = gan(**settings)
    return model, train(model, steps, device, settings.get("attributes"), precision)


SETTINGS = {
    "dcgan": {},
    "dcgan+ema+ramp": {"ema_decay": 0.9, "ema_ramp": 0.05},
    "conditional+ema": {"attributes": ATTRIBUTES, "ema_decay": 0.9},
    "r3gan+rpgan+half-life": {
        "nets": "r3gan",
        "objective": objectives.RelativisticPairing(),
        "ema_half_life": 100.0,
        "ema_ramp": 0.05,
    },
    "label smoothing": {"objective": objectives.NonSaturating(label_smoothing="one_sided")},
    # autocast caches casts of weights that need gradients: G's update must see D's new weights
    "bf16-mixed+ema": {"precision": "bf16-mixed", "ema_decay": 0.9},
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_the_captured_iteration_trains_the_same_weights_as_the_eager_one(settings):
    eager, eager_trainer = trained(**settings)
    captured, captured_trainer = trained(cuda_graph=True, **settings)
    assert captured._captured is not None  # the captured path ran, not the eager one
    expected, state = eager.state_dict(), captured.state_dict()
    assert expected.keys() == state.keys()
    differ = [key for key in expected if not torch.equal(expected[key], state[key])]
    assert not differ, differ
    for ours, theirs in zip(captured_trainer.optimizers, eager_trainer.optimizers, strict=True):
        for a, b in zip(ours.state.values(), theirs.state.values(), strict=True):
            assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    # Lightning counted one step an iteration, each optimizer stepped once an iteration
    assert captured_trainer.global_step == captured.iteration == 6
    assert adam_steps(captured_trainer) == (6, 6)
    assert captured.images_seen == eager.images_seen == 6 * 8


def test_the_captured_iteration_logs_what_the_eager_one_does():
    settings = {"ema_decay": 0.9, "ema_ramp": 0.05}
    _, eager = trained(steps=3, **settings)
    _, captured = trained(steps=3, cuda_graph=True, **settings)
    expected, logged = eager.logged_metrics, captured.logged_metrics
    assert set(logged) == set(expected) >= {"train/d_loss", "train/g_loss", "train/d_real", "train/ema_beta"}
    assert all(torch.equal(logged[key], expected[key]) for key in expected), (logged, expected)


REFUSED = {
    "model.d_regularizers": {"d_regularizers": [regularizers.R1(gamma=1.0)]},
    "model.augment": {"augment": DiffAugment()},
    "model.d_steps_per_g_step above 1": {"d_steps_per_g_step": 2},
    "model.fresh_latents": {"fresh_latents": True},
    "model.gradient_clip_norm": {"gradient_clip_norm": 1.0},
    "model.compile": {"compile": True},
    "model.lr or model.beta2 as a schedule": {"lr": Cosine(1e-3, 1e-4, 100)},
}


@pytest.mark.parametrize(("named", "settings"), REFUSED.items(), ids=REFUSED.keys())
def test_settings_the_captured_iteration_does_not_run_are_refused_in_one_line(named, settings):
    with pytest.raises(FacesError) as error:
        train(gan(cuda_graph=True, **settings), 1)
    message = str(error.value)
    assert "\n" not in message and f"cannot take {named}:" in message and "model.cuda_graph false" in message


def test_an_optimizer_that_cannot_step_in_a_graph_is_refused():
    from lightning_faces.capture import make_capturable

    with pytest.raises(FacesError, match="not SGD: change the optimizer"):
        make_capturable([torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_on_a_gpu_the_replayed_graph_trains_as_the_eager_step(settings):
    steps = 8  # 3 eager warm-up iterations, the capture, and replays
    eager, _ = trained(steps=steps, device="gpu", **settings)
    captured, trainer = trained(steps=steps, device="gpu", cuda_graph=True, **settings)
    assert captured._captured.graph is not None and trainer.global_step == steps
    for key, value in eager.state_dict().items():  # capturable Adam rounds differently: close, not equal
        torch.testing.assert_close(captured.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
