"""``python -m lightning_faces {fit,validate,test,predict,prepare,fid,download-weights,generate,...} ...``

The four training subcommands are LightningCLI's; ``prepare`` reads the same config and builds
the data's prepared arrays; ``fid``, ``download-weights``, ``generate``, ``interpolate``, ``export``
and ``serve`` are plain commands (``tools.py``).
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.plugins.io import CheckpointIO

from lightning_faces import distributed
from lightning_faces.callbacks import ProgressBar
from lightning_faces.checkpoint import (
    SafeCheckpointIO,
    gan_settings,
    generator_image_size,
    load_checkpoint,
    write_failure,
)
from lightning_faces.console import program_name, quiet_known_noise, say
from lightning_faces.data import FaceDataModule, parse_attribute_names
from lightning_faces.errors import FacesError
from lightning_faces.files import remove_stale_temporaries
from lightning_faces.hardware import choose_precision
from lightning_faces.loggers import (
    KeepWandbRun,
    RunStarted,
    new_process_run,
    prepare_wandb,
    remove_unstarted_run_folders,
)
from lightning_faces.metrics import FID
from lightning_faces.module import GAN
from lightning_faces.parsing import TRAINING, ShortErrorParser
from lightning_faces.signals import GracefulStop, StoppedAtOnce, restore_signal_handlers
from lightning_faces.slurm import Requeue, in_slurm_job, job_id, resume_checkpoint


class SaveConfigToLoggers(SaveConfigCallback):
    """Saves the resolved config to the run folder (as LightningCLI does) and to W&B's run config."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)


class FacesCLI(LightningCLI):
    """LightningCLI for the GAN: the data's image size is the model's, checkpoints are safe,
    W&B never waits at a login prompt, FID's weights are checked before training, and a SLURM
    job gets a run folder named by its job id, a requeue on the warning signal, and resumes."""

    slurm_folder: Path | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the model is the GAN unless the config names another LightningModule (model.class_path:
        # e.g. the attribute classifier); a config without class_path keeps meaning the GAN
        parser.set_defaults({"model": {"class_path": f"{GAN.__module__}.{GAN.__qualname__}"}})
        # one source of truth: G draws, and D judges, images of the size and the attributes the
        # data delivers (links into a model without such settings are skipped)
        for net in ("generator", "discriminator"):
            parser.link_arguments("data.init_args.image_size", f"model.init_args.{net}.init_args.image_size")
            parser.link_arguments(
                "data.init_args.attributes", f"model.init_args.{net}.init_args.attributes", compute_fn=attribute_list
            )
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.attributes", "model.init_args.attributes", compute_fn=attribute_list)
        parser.add_lightning_class_args(FID, "fid")  # the `fid:` section; added to the callbacks

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self.take_checkpoint_settings()

    def take_checkpoint_settings(self) -> None:
        """Reads ``--ckpt_path`` with the safe loader, then takes the model's settings from it.

        Lightning reads the file after this with ``torch.load`` and takes its settings too,
        but a damaged or foreign file is a traceback there, and settings the checkpoint
        overrides go in without a word. Here, first, a bad file is one line, an image size or
        attributes that disagree with the data are refused, and overridden settings are named.
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or path in ("last", "best", "hpc", "registry"):  # Lightning's own keywords
            return
        config = self.config[subcommand]
        if not _is_gan(config.model.class_path):  # another LightningModule: Lightning's own handling,
            saved = load_checkpoint(path).get("hyper_parameters") or {}  # which needs the class path
            if saved and "_class_path" not in saved:
                raise FacesError(
                    f"checkpoint {path} does not say which LightningModule saved it (an attribute classifier "
                    "from before lightning_faces 0.5.1), so its settings cannot be read back: train it again"
                )
            return
        hparams = gan_settings(load_checkpoint(path), path)
        if not hparams:
            return
        data_size, trained_size = config.data.init_args.get("image_size"), generator_image_size(hparams)
        if data_size is not None and trained_size is not None and data_size != trained_size:
            raise FacesError(
                f"checkpoint {path} was trained on {trained_size}px images, but data.image_size is {data_size}: "
                f"set --data.image_size {trained_size}, or start a new run without --ckpt_path"
            )
        data_attributes = attribute_list(config.data.init_args.get("attributes"))
        trained_attributes = list((hparams.get("generator", {}).get("init_args") or {}).get("attributes") or [])
        if data_attributes != trained_attributes:
            raise FacesError(
                f"checkpoint {path} was trained on attributes {trained_attributes or 'none'}, but data.attributes "
                f"is {data_attributes or 'empty'}: set data.attributes to the checkpoint's"
            )
        ours = _flatten(config.model.init_args.as_dict())
        differ = {
            key: (value, ours[key])
            for key, value in _flatten(hparams).items()
            if not key.endswith((".image_size", ".attributes")) and key in ours and _plain(ours[key]) != _plain(value)
        }
        if differ:
            say(
                f"checkpoint {path} sets "
                + ", ".join(f"model.{key} {theirs} (the config says {ours})" for key, (theirs, ours) in differ.items())
                + ": using the checkpoint's, which its weights were trained with"
            )
        model = {"class_path": config.model.class_path, "init_args": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True  # what SafeCheckpointIO does anyway; Lightning asks otherwise
        if self.subcommand == "fit" and in_slurm_job():
            self.slurm_folder = _pin_slurm_run_folder(config)
            checkpoint = resume_checkpoint(self.slurm_folder)
            if checkpoint is not None:
                # a requeued job: its own newest checkpoint beats any --ckpt_path it started from
                config["ckpt_path"] = str(checkpoint)
                self.save_config_kwargs["overwrite"] = True  # the same run: its config.yaml, now with ckpt_path
                say(
                    f"SLURM job {job_id()}, restart {os.environ.get('SLURM_RESTART_COUNT', 0)}: "
                    f"resuming from {checkpoint}"
                )
        wandb_loggers = [spec for spec in _logger_specs(config) if "WandbLogger" in str(spec.get("class_path", ""))]
        if not wandb_loggers:
            return
        prepare_wandb()
        checkpoint = config.get("ckpt_path")
        if self.subcommand == "fit" and checkpoint:
            run_id = load_checkpoint(checkpoint).get("wandb_run_id")
            for spec in wandb_loggers:
                if run_id and not spec["init_args"].get("id"):
                    spec["init_args"]["id"] = run_id  # continue the same W&B run, not a new one

    def setting(self, key: str) -> Any:
        """A value of the instantiated config (``trainer.plugins``, ``fid``), of this subcommand's."""
        config = self.config_init
        return config.get(str(self.subcommand), config).get(key)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        plugins = _as_list(self.setting("trainer.plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, SafeCheckpointIO()]
        callbacks = _as_list(self.setting("trainer.callbacks"))
        fid = self.setting("fid")
        if fid is not None and fid.active:
            callbacks = [*callbacks, fid.best_checkpoint()]
        bar_on = self.setting("trainer.enable_progress_bar") is not False
        if bar_on and not any(isinstance(c, LightningProgressBar) for c in callbacks):
            callbacks = [*callbacks, ProgressBar()]  # D's loss, D(x), D(G(z)) without per-step syncs
        if self.slurm_folder is not None:
            if not any(isinstance(p, ClusterEnvironment) for p in plugins):
                # Lightning's own handler would save from inside the signal handler: ours waits
                # for the end of the iteration (see slurm.py)
                plugins = [*plugins, SLURMEnvironment(auto_requeue=False)]
        kwargs["plugins"], kwargs["callbacks"] = plugins, callbacks
        if self.subcommand == "fit" and self.setting("trainer.precision") is None:
            precision, why = choose_precision(self.setting("trainer.accelerator"))
            if precision is not None:
                kwargs["precision"] = precision
                self.config[self.subcommand].trainer.precision = precision  # the run folder's config.yaml says so
                say(f"trainer.precision {precision}: {why} (set trainer.precision to choose)")
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks += [RunStarted(), KeepWandbRun()]
        if self.subcommand == "fit":
            # last of all callbacks (after FID and ModelCheckpoint): they save the finished iteration
            stop = GracefulStop()
            stop.install()  # from now on a signal stops the start cleanly (data preparation included)
            trainer.callbacks.append(stop)
            if self.slurm_folder is not None:
                trainer.callbacks.append(Requeue(str(self.slurm_folder)))
        return trainer

    def before_fit(self) -> None:
        checkpoint = self.config.fit.get("ckpt_path")
        if checkpoint and Path(checkpoint).is_file():
            remove_stale_temporaries(Path(checkpoint).parent)  # saves a killed run never finished
        for callback in self.trainer.callbacks:
            if isinstance(callback, FID):
                callback.check()  # fail now, not after an epoch of training


def _is_gan(class_path: str) -> bool:
    """Whether a config's ``model.class_path`` names the GAN (or a subclass of it)."""
    module_name, _, name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module_name), name, None)
    return isinstance(model_class, type) and issubclass(model_class, GAN)


def attribute_list(attributes: Any) -> list[str]:
    """``data.attributes`` as the networks take it: a list of CelebA names (``all`` spelled out)."""
    return list(parse_attribute_names(attributes))


def _as_list(value: Any) -> list:
    """A config value that may be one item, a list, or unset, as a list."""
    return value if isinstance(value, list) else [] if value is None else [value]


def _logger_specs(config: Any) -> Iterator[Any]:
    for spec in _as_list(config.get("trainer", {}).get("logger")):
        if hasattr(spec, "get") and spec.get("class_path"):
            yield spec


def _pin_slurm_run_folder(config: Any) -> Path:
    """Names file loggers' version folder after the SLURM job; returns the run folder.

    A requeued job keeps its job id, so it writes on into the folder of its first start:
    ``<save_dir>/<name>/slurm-<job id>`` with the configs' CSVLogger.
    """
    version = f"slurm-{job_id()}"
    specs = list(_logger_specs(config))
    for spec in specs:
        if spec["class_path"].rsplit(".", 1)[-1] in FILE_LOGGERS and spec["init_args"].get("version") is None:
            spec["init_args"]["version"] = version
    first = specs[0] if specs else None
    if first is not None and first["class_path"].rsplit(".", 1)[-1] in FILE_LOGGERS:
        args = first["init_args"]
        return Path(args["save_dir"]) / (args.get("name") or "") / str(args["version"])
    # no file logger first: the trainer's root folder, made per job
    root = Path(config["trainer"].get("default_root_dir") or ".") / version
    config["trainer"]["default_root_dir"] = str(root)
    return root


FILE_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"generator": {"init_args": {"width": 64}}} ->
    {"generator.init_args.width": 64}, so that a difference is named by its exact key."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> Any:
    """Config values compared as plain data (a YAML list and a saved tuple are the same)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def main(args: list[str] | None = None) -> None:
    """Runs the CLI; a FacesError becomes one line on stderr and exit status 2."""
    argv = sys.argv[1:] if args is None else args
    quiet_known_noise()
    new_process_run()
    try:
        first = argv[0] if argv else "--help"
        if first not in TRAINING and (first in ("-h", "--help") or not first.startswith("-")):
            from lightning_faces.tools import run_tool  # the whole tree: tools, --help, unknown commands

            run_tool(argv)
            return
        check_not_only_overlays(argv)
        if first == "prepare":
            prepare(argv[1:])
            return
        cli = make_cli(args)
    except StoppedAtOnce as stop:
        remove_unstarted_run_folders()
        say(f"stopped: {stop}")
        raise SystemExit(stop.exit_status) from None
    except KeyboardInterrupt:  # a tool (serve, fid, ...), or a run before GracefulStop's handler
        remove_unstarted_run_folders()
        run = bool(argv) and argv[0] in ("fit", "validate", "test", "predict")
        say(f"stopped: Ctrl-C{f' before {argv[0]} started' if run else ''}")
        raise SystemExit(130) from None
    except Exception as error:
        remove_unstarted_run_folders()  # a start that failed leaves no run folder behind
        # a FacesError raised while the config parser builds a class comes back wrapped in the
        # parser's own error (e.g. "Does not validate against any of the Union subtypes")
        cause = user_error(error)
        if cause is None:
            raise
        print(f"error: {_one_line(cause)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        restore_signal_handlers()  # after a failure Lightning's teardown may put GracefulStop's back
    stop = next((c for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, GracefulStop)), None)
    if stop is not None and stop.exit_status is not None:
        if stop.saved_to is not None:
            name = stop.received.name if stop.received else "a signal"
            say(f"stopped by {name}: resume with --ckpt_path {stop.saved_to}")
        raise SystemExit(stop.exit_status)  # 143 for SIGTERM, 130 for Ctrl-C: not a finished run


def check_not_only_overlays(argv: list[str]) -> None:
    """Refuses, in one line, configs that are all overlays (a YAML whose first line starts
    ``# Overlay``): each changes a complete config and means nothing alone."""
    configs = [Path(value) for value in _option_values(argv, ("--config", "-c"))]
    overlays = [config for config in configs if _is_overlay(config)]
    if not configs or len(overlays) < len(configs):
        return
    overlay = overlays[0]
    before = _configs_before(overlay) or ["configs/dcgan.yaml"]
    example = " ".join(f"--config {name}" for name in [*before, str(overlay)])
    raise FacesError(
        f"{overlay} is an overlay: it changes a complete config and cannot run alone; put a complete one before it, "
        f"e.g. {example}"
    )


def _option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """The values given to an option of ``names`` (``--config X``, ``--config=X``, ``-c X``)."""
    values = []
    for index, item in enumerate(argv):
        if item in names and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif item.startswith(tuple(f"{name}=" for name in names)):
            values.append(item.split("=", 1)[1])
    return values


def _header(config: Path) -> list[str]:
    """The comment lines a YAML file opens with (empty when it cannot be read)."""
    try:
        lines = config.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    return header


def _is_overlay(config: Path) -> bool:
    header = _header(config)
    return bool(header) and header[0].startswith("Overlay")


def _configs_before(overlay: Path) -> list[str]:
    """The configs that the overlay's own usage line (in its header) puts before it."""
    commands = " ".join(_header(overlay)).replace("\\ ", " ")
    for command in re.findall(r"python -m lightning_faces fit ((?:--config \S+\s*)+)", commands):
        names = re.findall(r"--config (\S+)", command)
        if names and Path(names[-1]).name == overlay.name and len(names) > 1:
            return names[:-1]
    return []


WRITE_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def user_error(error: BaseException | None) -> FacesError | None:
    """The FacesError that ``error`` is, or was raised from (its cause or context chain).

    A file that cannot be written (read-only file system, no permission, full disk) is a
    problem the user fixes too, wherever it happens (run folder, logger, checkpoint).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FacesError):
            return error
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS and error.filename:
            target = Path(error.filename)
            return FacesError(f"cannot write {target}: {write_failure(error, target.parent)}")
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def make_cli(args: list[str] | None, **options: Any) -> FacesCLI:
    """The training CLI (parses args, and runs the subcommand unless ``run=False``)."""
    distributed.register()  # strategy: ddp (and auto on several devices) trains G and D apart
    settings = {
        "parser_kwargs": {"prog": program_name()},
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,  # the GAN configures its two optimizers itself
        "save_config_callback": SaveConfigToLoggers,
        "parser_class": ShortErrorParser,
        **options,
    }
    return FacesCLI(L.LightningModule, FaceDataModule, args=args, subclass_mode_model=True, **settings)


def prepare(args: list[str]) -> None:
    """``prepare --config C [--data.key value ...]``: builds the prepared arrays ``fit`` reads.

    Run it once on a login node (or let the first fit do it): decoding CelebA's 200k JPEGs
    takes minutes, reading the prepared array takes seconds.
    """
    data = make_cli(args, run=False, save_config_callback=None).datamodule
    if not getattr(data, "prepared", False):
        raise FacesError(f"{type(data).__name__} has nothing to prepare (no image files, or data.prepared is false)")
    for folder in data.prepare(data.fit_splits()):
        print(f"prepared: {folder}")


def _one_line(error: Exception) -> str:
    # errors raised in a DataLoader worker come back with the worker's traceback appended
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)
