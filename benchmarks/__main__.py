"""``python -m benchmarks --data-dir ../shared/celeba-sample [--device cuda]``: data, then training.

Each prints its table and writes JSON under runs/benchmarks/; options after ``--train`` go to
the training benchmark only (e.g. ``--train --variants 32-true bf16-mixed --iterations 200``).
"""

from __future__ import annotations

import argparse

from benchmarks import data, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="../shared/celeba-sample")
    parser.add_argument("--device", default="cpu")
    args, rest = parser.parse_known_args()
    train_args = rest[rest.index("--train") + 1 :] if "--train" in rest else []
    data.main(["--data-dir", args.data_dir])
    train.main(["--data-dir", args.data_dir, "--device", args.device, *train_args])


if __name__ == "__main__":
    main()
