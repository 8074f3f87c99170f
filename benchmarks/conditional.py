"""Conditional faces on CelebA: how well the classifier reads attributes, how well G obeys them.

On the CelebA images of ``--data-dir``, with the quality benchmark's held-out images as the test
split (the same seeded 1,000, so KIDs compare with its table) and a seeded ``--valid`` of the
rest for validation:

1. trains the attribute classifier (``configs/attribute_classifier.yaml``, all 40 attributes)
   and reports its per-attribute accuracy on the test split;
2. trains ``dcgan.yaml + ema.yaml + conditional.yaml`` (13 attributes, projection D) and, for
   comparison, ``dcgan.yaml + ema.yaml`` (unconditional) for ``--minutes`` each on the training
   split, the first with ``control.AttributeAccuracy`` judged by that classifier (``--recipe
   r3gan``: ``r3gan.yaml`` and the quality benchmark's CPU overlay instead of DCGAN + EMA);
3. scores both with KID and FID against the held-out images (as ``benchmarks.quality``).

    python -m benchmarks.conditional --data-dir ../shared/celeba-sample --minutes 6 \\
        --weights ../shared/fid/inception-2015-12-05-torchfidelity-layout-nofc.pth
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import repo_env, table, write_json
from benchmarks.quality import CANDIDATES, CONFIGS, fake_batches, features_of, real_features, score, split_images
from lightning_faces.metrics import RESIZES, check_inception_weights, make_fid, real_sample

# the configs both GANs are made of (the conditional one adds conditional.yaml), and overrides
RECIPES: dict[str, tuple[list[str], list[str]]] = {
    "dcgan": (["dcgan.yaml", "ema.yaml"], []),
    "r3gan": (["r3gan.yaml"], CANDIDATES["r3gan"][1]),  # the CPU overlay (its widths override --width)
}


def celeba_split(data_dir: Path, work: Path, held_out: int, valid: int) -> Path:
    """A CelebA layout under work/split whose test split is the quality benchmark's held-out images."""
    _, held_out_dir = split_images(data_dir, work, held_out)
    tested = {p.name for p in held_out_dir.iterdir()}
    source = data_dir / "celeba"
    folder = work / "split" / "celeba"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("img_align_celeba", "list_attr_celeba.txt"):
        if not (folder / name).exists():
            (folder / name).symlink_to((source / name).resolve())
    names = sorted(p.name for p in (source / "img_align_celeba").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rest = [name for name in names if name not in tested]
    validated = {rest[i] for i in real_sample(len(rest), valid, seed=1)}
    lines = [f"{name} {2 if name in tested else 1 if name in validated else 0}" for name in names]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder.parent


def run(command: list[str], what: str) -> None:
    started = time.perf_counter()
    env = repo_env()
    command = [sys.executable, "-m", "lightning_faces", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    print(f"  {what}: {time.perf_counter() - started:.0f} s", flush=True)


def last_row(metrics: Path, key: str) -> dict[str, float]:
    """The last row of a run's metrics.csv that has ``key``, as numbers."""
    rows = [row for row in csv.DictReader(metrics.open()) if row.get(key)]
    return {name: float(value) for name, value in rows[-1].items() if value}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/celeba-sample", help="folder holding celeba/")
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall time per GAN")
    parser.add_argument("--classifier-steps", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--recipe", default="dcgan", choices=RECIPES, help="the configs of both GANs")
    parser.add_argument("--width", type=int, default=32, help="G's and D's width (dcgan: CPU-sized)")
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=1000, help="test images (the quality benchmark's)")
    parser.add_argument("--valid", type=int, default=500, help="validation images, from the rest")
    parser.add_argument("--samples", type=int, default=1000, help="generated images scored per run")
    parser.add_argument("--kid-subsets", type=int, default=50)
    parser.add_argument("--kid-subset-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100, help="images per Inception pass")
    parser.add_argument("--crop", type=float, default=0.79)
    parser.add_argument("--resize", default="tensorflow", choices=RESIZES)
    parser.add_argument("--weights", default=None, help="Inception weights file (default: torch-fidelity's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="runs/benchmarks/conditional")
    parser.add_argument("--json", default="runs/benchmarks/conditional.json")
    args = parser.parse_args(argv)
    work, device = Path(args.work).resolve(), torch.device(args.device)
    work.mkdir(parents=True, exist_ok=True)
    check_inception_weights(args.weights, option="--weights")
    split = celeba_split(Path(args.data_dir), work, args.held_out, args.valid)
    runs = work / "runs"
    data = ["--data.data_dir", str(split), "--data.image_size", str(args.image_size), "--data.num_workers", "0"]
    data += ["--data.crop", str(args.crop), "--trainer.logger.init_args.save_dir", str(runs)]
    data += ["--trainer.enable_progress_bar", "false"]

    # 1. the judge, on all 40 attributes
    judge_config = ["--config", str(CONFIGS / "attribute_classifier.yaml"), *data]
    judge_run = runs / "attribute_classifier" / "version_0"
    judge = judge_run / "checkpoints" / "last.ckpt"
    if not judge.exists():
        steps = ["--trainer.max_steps", str(args.classifier_steps), "--trainer.val_check_interval", "500"]
        run(["fit", *judge_config, *steps, "--trainer.logger.init_args.version", "0"], "attribute classifier")
    test_metrics = runs / "attribute_classifier" / "test" / "metrics.csv"
    if not test_metrics.exists():
        run(["test", *judge_config, "--ckpt_path", str(judge), "--trainer.logger.init_args.version", "test"], "test")
    tested = last_row(test_metrics, "test/accuracy")

    # 2. the conditional GAN and its unconditional twin, equal wall time
    minutes, seconds = int(args.minutes), round((args.minutes % 1) * 60)
    width = str(args.width)
    shared = [
        *data,
        *RECIPES[args.recipe][1],
        "--model.generator.init_args.width", width, "--model.discriminator.init_args.width", width,
        "--data.batch_size", str(args.train_batch_size), "--data.val_split", "null",
        "--trainer.precision", "32-true",  # as benchmarks.quality's rows, whatever the CPU
        "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}", "--trainer.max_epochs", "-1",
        "--fid.every_n_epochs", "0", "--fid.every_n_steps", "0", "--trainer.callbacks+=benchmarks.quality.SaveAtEnd",
    ]  # fmt: skip
    recipe = RECIPES[args.recipe][0]
    prefix = "" if args.recipe == "dcgan" else f"{args.recipe}-"  # run folders: runs/<prefix>conditional
    configs = {f"{prefix}conditional": [*recipe, "conditional.yaml"], f"{prefix}unconditional": recipe}
    judged = ["--trainer.callbacks.classifier_path", str(judge), "--trainer.callbacks.every_n_epochs", "5"]
    extra = {f"{prefix}conditional": judged}
    extractor = make_fid(args.weights, resize=args.resize).inception.to(device).eval()
    real = real_features(work / "held-out", args, extractor, device)
    rows = []
    for name, files in configs.items():
        folder = runs / name / "version_0"
        checkpoint = folder / "checkpoints" / "final.ckpt"
        if not checkpoint.exists():
            config = [item for f in files for item in ("--config", str(CONFIGS / f))]
            logger = ["--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", "0"]
            # the judge's settings address the config's last callback: before SaveAtEnd joins the list
            run(["fit", *config, *extra.get(name, []), *shared, *logger], f"{name} GAN")
        fake = features_of(fake_batches(checkpoint, args, device), extractor, device, name)
        iterations = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"])
        row = {"config": name, "iterations": iterations, **score(real, fake, args)}
        if name == f"{prefix}conditional":
            control = last_row(folder / "metrics.csv", "val/attribute_accuracy")
            row["attribute accuracy"] = control["val/attribute_accuracy"]
            row["per attribute"] = {k.rsplit("/", 1)[1]: v for k, v in control.items() if "attribute_accuracy/" in k}
        rows.append(row)
        print(f"  {row}", flush=True)

    per_attribute = {k.rsplit("/", 1)[1]: v for k, v in tested.items() if k.startswith("test/accuracy/")}
    print(f"\nClassifier: mean test accuracy {tested['test/accuracy']:.3f} over 40 attributes ({args.held_out} images)")
    accuracies = [{"attribute": k, "test accuracy": f"{v:.3f}"} for k, v in per_attribute.items()]
    print(table(accuracies, ["attribute", "test accuracy"]))
    summary = [
        {
            "config": row["config"],
            "iterations": row["iterations"],
            "KID x 1000": f"{1000 * row['kid']:.1f} +- {1000 * row['kid_std']:.1f}",
            "FID": f"{row['fid']:.1f}",
            "attribute accuracy": f"{row['attribute accuracy']:.3f}" if "attribute accuracy" in row else "-",
        }
        for row in rows
    ]
    protocol = (
        f"{args.recipe}, {args.image_size}px, width {args.width}, batch {args.train_batch_size}, "
        f"{args.minutes:g} min per GAN on {device}; {len(real)} held-out real vs {args.samples} generated images"
    )
    print(f"\nGANs at equal wall time ({protocol})")
    print(table(summary, list(summary[0])))
    result = {
        "benchmark": "conditional",
        "protocol": protocol,
        "settings": vars(args),
        "classifier": {"mean": tested["test/accuracy"], "per attribute": per_attribute},
        "runs": rows,
    }
    print(f"\nwrote {write_json(args.json, result)}")
    return result


if __name__ == "__main__":
    main()
