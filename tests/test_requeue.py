"""The SLURM pieces that need no cluster: the warning signal in one process, resume choice."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch

from lightning_faces.slurm import Requeue, resume_checkpoint
from tests.test_module import make_model, train


class SignalAt(L.Callback):
    """Sends this process SIGUSR1 at an iteration, as SLURM does 90 s before the limit."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_warning_signal_saves_the_finished_iteration_stops_and_requeues(tmp_path, monkeypatch):
    calls = tmp_path / "scontrol-calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.getsignal(signal.SIGUSR1)

    requeue = Requeue(str(tmp_path / "run"))
    trainer = train(tmp_path, make_model(), steps=20, callbacks=[SignalAt(3), requeue])

    assert trainer.global_step == 3  # stopped after the iteration the signal came in
    saved = torch.load(requeue.checkpoint_path(), weights_only=True)
    assert saved["global_step"] == 3 and saved["iteration"] == 3
    assert calls.read_text().split() == ["requeue", "4242"]
    assert signal.getsignal(signal.SIGUSR1) is before  # handler restored after fit


def test_resume_prefers_the_most_iterations_then_the_requeue_checkpoint(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name, step in (("requeue.ckpt", 10), ("last.ckpt", 10), ("epoch=0-step=8.ckpt", 8)):
        torch.save({"global_step": step}, folder / name)
    assert resume_checkpoint(tmp_path / "run") == folder / "requeue.ckpt"  # same step: the mid-epoch one
    torch.save({"global_step": 12}, folder / "last.ckpt")
    assert resume_checkpoint(tmp_path / "run") == folder / "last.ckpt"  # a later one wins
    (folder / "half-written.ckpt").write_bytes(b"PK\x03\x04 cut off")
    assert resume_checkpoint(tmp_path / "run") == folder / "last.ckpt"
    assert resume_checkpoint(tmp_path / "empty") is None


class RecordBatches(L.Callback):
    """Records what each iteration trains on: a fingerprint of every image, in batch order."""

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.seen.append(batch[0].flatten(1).sum(1).tolist())  # after flips: those count too


def test_a_run_resumed_mid_epoch_trains_on_exactly_the_batches_of_the_uninterrupted_run(tmp_path):
    """32 images at batch 8: 4 iterations an epoch. Stop after 6 (mid-epoch 2), resume to 11."""
    from lightning_faces.data import SyntheticFacesDataModule

    def data():
        return SyntheticFacesDataModule(num_images=32, num_val_images=0, image_size=16, batch_size=8, flip=True)

    def run(steps, callbacks, ckpt_path=None):
        L.seed_everything(0)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=callbacks)  # fmt: skip
        model = make_model()
        trainer.fit(model, data(), ckpt_path=ckpt_path)
        return trainer, model

    class SaveAndStop(L.Callback):  # as ModelCheckpoint, SIGTERM and SLURM's requeue save
        def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == 6:
                trainer.save_checkpoint(tmp_path / "mid-epoch.ckpt")
                trainer.should_stop = True

    whole = RecordBatches()
    _, uninterrupted = run(11, [whole])
    first, second = RecordBatches(), RecordBatches()
    run(11, [first, SaveAndStop()])
    _, resumed = run(11, [second], ckpt_path=tmp_path / "mid-epoch.ckpt")

    assert len(first.seen) == 6 and len(second.seen) == 5
    assert first.seen + second.seen == whole.seen  # the same images, order and flips
    for name, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
