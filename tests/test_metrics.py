import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import lightning_faces.metrics as metrics
from lightning_faces.data import SyntheticFacesDataModule
from lightning_faces.errors import FacesError
from lightning_faces.metrics import FID, check_inception_weights, make_fid


class TinyFeatures(nn.Module):
    """A fixed random projection of 4x4-pooled pixels: 6 features, stands in for Inception."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(48, 6)
        with torch.no_grad():
            self.proj.weight.copy_(4 * torch.randn(6, 48, generator=torch.Generator().manual_seed(0)))
            self.proj.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W)
        pooled = nn.functional.adaptive_avg_pool2d(images.float() / 255, 4)
        return self.proj(pooled.flatten(1))


def numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)), straight from the definition."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def random_images(n: int, seed: int, shift: int = 0, spread: int = 200) -> torch.Tensor:
    """Images with a random colour each (from shift to shift + spread), plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, spread, (n, 3, 1, 1), generator=g) + shift
    noise = torch.randint(0, 40, (n, 3, 16, 16), generator=g)
    return (colours + noise).clamp(0, 255).to(torch.uint8)


def test_fid_as_wired_matches_a_plain_numpy_scipy_frechet_distance():
    features = TinyFeatures()
    real, fake = random_images(200, 1), random_images(150, 2, shift=60, spread=120)  # other mean and spread
    fid = make_fid(feature_extractor=features)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    with torch.no_grad():
        expected = numpy_frechet(features(real).double().numpy(), features(fake).double().numpy())
    assert expected > 1.0  # the two sets really differ (same-set FID is ~0, below)
    assert fid.compute().item() == pytest.approx(expected, rel=1e-4)


def test_real_against_the_same_real_images_is_about_zero():
    fid = make_fid(feature_extractor=TinyFeatures())
    images = random_images(100, 3)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert abs(fid.compute().item()) < 1e-3


def callback_and_trainer(tmp_path, rank=0, world=1, num_samples=40):
    data = SyntheticFacesDataModule(num_images=48, num_val_images=0, image_size=16, batch_size=8)
    callback = FID(
        num_samples=num_samples, batch_size=16, cache_dir=str(tmp_path / "cache"), feature_extractor=TinyFeatures()
    )

    def broadcast(decision, src):
        # one process standing in for several: rank 0's decision is whether it found the cache
        return decision if rank == 0 else any((tmp_path / "cache").glob("real-*.pt"))

    strategy = SimpleNamespace(reduce=lambda tensor, reduce_op: tensor, broadcast=broadcast)
    trainer = SimpleNamespace(
        datamodule=data, global_rank=rank, world_size=world, is_global_zero=rank == 0, strategy=strategy
    )
    module = SimpleNamespace(device=torch.device("cpu"))
    callback.fid = make_fid(feature_extractor=callback.feature_extractor)
    return callback, trainer, module


def test_real_statistics_are_cached_and_reused_and_rekeyed(tmp_path):
    first, trainer, module = callback_and_trainer(tmp_path)
    first._load_or_compute_real(trainer, module)
    assert first.last_cache_hit is False and int(first.fid.real_features_num_samples) == 40
    assert len(list((tmp_path / "cache").glob("real-*.pt"))) == 1

    second, trainer, module = callback_and_trainer(tmp_path)
    second._load_or_compute_real(trainer, module)
    assert second.last_cache_hit is True
    for name in metrics.REAL_STATES:
        torch.testing.assert_close(getattr(second.fid, name), getattr(first.fid, name))

    other_count, trainer, module = callback_and_trainer(tmp_path, num_samples=30)  # another key
    other_count._load_or_compute_real(trainer, module)
    assert other_count.last_cache_hit is False and int(other_count.fid.real_features_num_samples) == 30
    trainer.datamodule.image_size = 32  # another resolution: another key
    other_size, _, _ = callback_and_trainer(tmp_path)
    other_size._load_or_compute_real(trainer, module)
    assert other_size.last_cache_hit is False
    assert len(list((tmp_path / "cache").glob("real-*.pt"))) == 3

    other_features, trainer, module = callback_and_trainer(tmp_path)
    with torch.no_grad():
        other_features.feature_extractor.proj.weight.mul_(2)  # another feature network: another key
    trainer.datamodule.image_size = 16
    other_features._load_or_compute_real(trainer, module)
    assert other_features.last_cache_hit is False


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    first, trainer, module = callback_and_trainer(tmp_path)
    first._load_or_compute_real(trainer, module)
    (cache_file,) = (tmp_path / "cache").glob("real-*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again, trainer, module = callback_and_trainer(tmp_path)
    again._load_or_compute_real(trainer, module)
    assert again.last_cache_hit is False and int(again.fid.real_features_num_samples) == 40


def test_only_rank_zero_holds_cached_real_statistics(tmp_path):
    rank0, trainer, module = callback_and_trainer(tmp_path)
    rank0._load_or_compute_real(trainer, module)
    rank1, trainer, module = callback_and_trainer(tmp_path, rank=1, world=2)
    rank1._load_or_compute_real(trainer, module)
    assert rank1.last_cache_hit is True
    # summed over ranks by torchmetrics, rank 0's totals plus zeros count each real image once
    assert int(rank1.fid.real_features_num_samples) == 0 and rank1.fid.real_features_sum.abs().sum() == 0
    assert int(rank0.fid.real_features_num_samples) == 40


def offline(url, dst, progress=True):
    Path(dst).write_bytes(b"partial")
    raise __import__("urllib.error").error.URLError("Name or service not known")


def test_missing_inception_weights_are_downloaded_at_start_up(tmp_path, monkeypatch):
    def fetch(url, dst, progress=True):
        assert url == metrics.INCEPTION_URL and progress  # the official file, with a progress bar
        torch.save({key: torch.zeros(shape) for key, shape in metrics.INCEPTION_SHAPES.items()}, dst)

    monkeypatch.setattr(metrics, "default_weights_file", lambda: tmp_path / "hub" / "inception.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    assert check_inception_weights(None) is None  # torch-fidelity's default file: now there
    assert (tmp_path / "hub" / "inception.pth").is_file()


def test_missing_inception_weights_without_internet_name_the_key_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "default_weights_file", lambda: tmp_path / "absent.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FacesError, match="does not exist .*failed.*feature_extractor_weights_path.*download-weights"):
        check_inception_weights(None)
    with pytest.raises(FacesError, match="is not a file.*download-weights"):
        check_inception_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(FacesError, match="--weights PATH"):  # the fid command's own option
        check_inception_weights(str(tmp_path / "nope.pth"), option="--weights")


def test_inception_weights_with_pickled_code_are_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"conv.weight": Exploit()}))
    with pytest.raises(FacesError, match=r"holds pickled Python objects \(builtins.print\)"):
        check_inception_weights(str(path))
    torch.save({key: torch.zeros(shape) for key, shape in metrics.INCEPTION_SHAPES.items()}, path)
    assert check_inception_weights(str(path)) == str(path)  # tensors of Inception's layout pass


def test_failed_weights_download_says_so_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    target = tmp_path / "inception.pth"
    with pytest.raises(FacesError, match="downloading the Inception weights from .* failed"):
        metrics.download_weights(target)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> str:
    """An Inception file of torch-fidelity's layout with random weights: the real network and
    its resize, offline (the official weights would be a download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save({}, path)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None  # keep the random init
    try:
        torch.manual_seed(0)
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    for layer in network.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)  # keeps the features' scale through 90 ReLU layers
    torch.save(network.state_dict(), path)
    return str(path)


def test_the_resize_setting_reaches_inception_and_changes_the_score(random_inception):
    from lightning_faces.data.images import crop_and_resize
    from tests.conftest import face_like_image

    def faces(offset: int) -> torch.Tensor:  # 64x64 faces: upsampled to 299, where the resizes differ
        return torch.stack(
            [torch.from_numpy(crop_and_resize(face_like_image(i + offset, 64, 64), 64, 1.0)).permute(2, 0, 1)
             for i in range(6)]
        )  # fmt: skip

    real, fake = faces(0), faces(50)
    scores = {}
    for resize in ("tensorflow", "antialiased"):
        fid = make_fid(random_inception, resize=resize)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        scores[resize] = fid.compute().item()
    assert scores["tensorflow"] > 1  # distinct images, distinct features (the network is not degenerate)
    assert scores["tensorflow"] != pytest.approx(scores["antialiased"], rel=1e-3)  # 5.45 vs 5.42 when written
    assert FID(resize="tensorflow").resize == "tensorflow"  # the published protocol is the default
    with pytest.raises(FacesError, match="fid.resize must be one of tensorflow, antialiased"):
        FID(resize="bicubic")


def test_fast_inception_gives_the_features_of_the_plain_one_in_chunks_on_cpu(random_inception):
    from lightning_faces.metrics import CPU_CHUNK

    images = torch.randint(0, 256, (CPU_CHUNK + 5, 3, 32, 32), dtype=torch.uint8)
    fast, plain = make_fid(random_inception).inception, make_fid(random_inception, fast=False).inception
    passes = []
    fast.inception.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    with torch.no_grad():
        expected, got = plain(images), fast(images)
    assert passes == [CPU_CHUNK, 5]  # two passes on a CPU, one image set
    assert got.shape == expected.shape == (CPU_CHUNK + 5, 2048)
    # channels-last convolutions sum in another order: float noise only (1.2e-5 of features
    # up to ~5 with the real weights, benchmarks.fid); here relative to the features' scale
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_real_statistics_come_from_a_seeded_random_sample_not_the_first_images(tmp_path):
    from lightning_faces.metrics import real_sample

    picked = real_sample(1000, 50)
    assert picked == sorted(picked) and len(set(picked)) == 50
    assert picked != list(range(50)) and max(picked) > 500  # spread over the split
    assert real_sample(1000, 50) == picked  # the same sample every time (the cache relies on it)
    callback, trainer, module = callback_and_trainer(tmp_path, num_samples=10)
    seen = []
    original = metrics.update_from_loader

    def record(fid, loader, real, device, show):
        seen.extend(loader.dataset.indices)
        original(fid, loader, real, device, show)

    metrics.update_from_loader, saved = record, metrics.update_from_loader
    try:
        callback._load_or_compute_real(trainer, module)
    finally:
        metrics.update_from_loader = saved
    assert seen == real_sample(48, 10) and seen != list(range(10))
    assert "seeded random sample" in callback.protocol["real"]


def test_an_epoch_ending_on_a_step_interval_is_scored_once(tmp_path):
    from tests.test_module import make_model, train

    class Counting(FID):
        calls: list[int] = []

        def evaluate(self, trainer, module):
            value = super().evaluate(trainer, module)
            if value is not None:
                self.calls.append(trainer.global_step)
            return value

    # 32 images at batch 8: an epoch is 4 iterations, so step 4 and the epoch end coincide
    callback = Counting(every_n_epochs=1, every_n_steps=2, num_samples=8, batch_size=8,
                        cache_dir=str(tmp_path / "cache"), feature_extractor=TinyFeatures())  # fmt: skip
    train(tmp_path, make_model(), steps=4, callbacks=[callback])
    assert callback.calls == [2, 4]
    assert [step for step, _ in callback.history] == [2, 4]


def test_kid_precision_and_recall_are_logged_beside_fid_from_one_feature_pass(tmp_path):
    import csv

    import lightning as L

    from lightning_faces.checkpoint import SafeCheckpointIO
    from lightning_faces.loggers import CSVLogger
    from tests.test_module import make_model

    class Counted(TinyFeatures):
        passes = 0

        def forward(self, images):
            Counted.passes += 1
            return super().forward(images)

    logged = {}
    for name, extra in (("fid", {}), ("more", {"metrics": ["fid", "kid", "precision", "recall"]})):
        Counted.passes = 0
        callback = FID(every_n_epochs=0, every_n_steps=4, num_samples=16, batch_size=8, kid_subset_size=16,
                       cache_dir=str(tmp_path / name), feature_extractor=Counted(), **extra)  # fmt: skip
        L.seed_everything(0, verbose=False)
        quiet = {"enable_progress_bar": False, "enable_checkpointing": False, "plugins": [SafeCheckpointIO()]}
        logger = CSVLogger(tmp_path, name=name)
        trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=logger, callbacks=[callback], **quiet)
        trainer.fit(
            make_model(), SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8)
        )
        rows = list(csv.DictReader((tmp_path / name / "version_0" / "metrics.csv").open()))
        logged[name] = next(row for row in rows if row.get("val/fid"))
        assert Counted.passes == 4  # 16 real and 16 generated images at 8 a pass: once each
    assert logged["fid"]["val/fid"] == logged["more"]["val/fid"]  # the same FID either way
    assert "val/kid" not in logged["fid"] and math.isfinite(float(logged["more"]["val/kid"]))
    assert all(0 <= float(logged["more"][f"val/{name}"]) <= 1 for name in ("precision", "recall"))
    assert callback.protocol["metrics"] == "fid kid precision recall"


def test_training_metrics_are_checked_at_once():
    with pytest.raises(FacesError, match="fid.metrics: fdi; choose from"):
        FID(metrics=["fid", "fdi"])
    with pytest.raises(FacesError, match="must include fid: the best checkpoint follows val/fid"):
        FID(metrics=["kid"])
    callback = FID(metrics=["fid", "is"], feature_extractor=TinyFeatures())
    with pytest.raises(FacesError, match="is needs Inception's classifier: not with fid.feature_extractor"):
        callback.setup(None, None, "fit")
