"""When a measurement of the generator runs: every few epochs or iterations, once per iteration.

FID, attribute accuracy and sample grids share this schedule; each says only what it measures
(``evaluate``). Each iteration is measured at most once, so an epoch that ends on a step
interval, or the end of training right after an evaluation, does not measure the same weights
twice; a run resumed from a checkpoint keeps the history of what was measured.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class Periodic(L.Callback):
    """Calls ``evaluate(trainer, module)`` on a schedule and keeps ``(iteration, value)``.

    Args:
        every_n_epochs: epochs between evaluations (0: none at epoch ends).
        every_n_steps: iterations between evaluations (0: none mid-epoch).
    """

    metric = ""  # the logged name of the value ``evaluate`` returns (its learning curve)
    at_train_start = False  # also before the first iteration of a new run
    at_train_end = False  # also after the last iteration

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0) -> None:
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.history: list[tuple[int, float]] = []  # kept in checkpoints
        self._evaluated_at: int | None = None

    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> Any:
        """Measures the module now; returns the value to keep (a number), or None."""
        raise NotImplementedError

    def run(self, trainer: L.Trainer, module: L.LightningModule) -> Any:
        """``evaluate`` unless this iteration was measured already (then None)."""
        step = trainer.global_step
        if self._evaluated_at == step or (self.history and self.history[-1][0] == step):
            return None
        self._evaluated_at = step
        value = self.evaluate(trainer, module)
        if value is not None and self.metric:
            self.history.append((step, float(value)))
        return value

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.at_train_start and trainer.global_step == 0:
            self.run(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.run(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.run(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.at_train_end:
            self.run(trainer, module)

    def curve_points(self) -> dict[str, list[tuple[int, float]]]:
        """The values measured so far, for the learning curves."""
        return {self.metric: self.history} if self.metric else {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
