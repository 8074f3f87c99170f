"""Truncation, measured: how faces' variety and quality move with psi, pulled toward the average
face in G's first block (the package's way) against scaling the latent (``psi * z``).

    python -m benchmarks.truncation G [--work runs/benchmarks/quality --weights INCEPTION]

G is a checkpoint or an export. For each psi and each way it prints the pixel spread of
``--samples`` faces (the std over faces, averaged over pixels, in grey levels of 255: 0 means
every face is the same) and, given ``--work`` (a quality benchmark's folder, whose held-out
features it reuses) and Inception weights, KID and FID against the held-out real faces. It
writes a grid per way, one row per psi over the same seeds, to look at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from benchmarks.common import table, write_json
from lightning_faces import load_generator
from lightning_faces.data import to_uint8

PSIS = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]


def faces(generator, latents: torch.Tensor, psi: float, way: str) -> torch.Tensor:
    """uint8 faces of unconditional ``latents`` at ``psi``, truncated in the first block or in z."""
    if way == "first block":
        return generator.render(latents, None, psi)
    with torch.no_grad():
        return to_uint8(generator.network(psi * latents.to(generator.device))).cpu()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", help="a checkpoint (.ckpt) or an export folder (unconditional)")
    parser.add_argument("--psi", type=float, nargs="+", default=PSIS)
    parser.add_argument("--samples", type=int, default=500, help="faces per psi and way")
    parser.add_argument("--work", default=None, help="a quality benchmark folder: KID/FID against its held-out")
    parser.add_argument("--weights", default=None, help="Inception weights for KID/FID")
    parser.add_argument("--out", default="runs/benchmarks/truncation", help="grids and JSON")
    args = parser.parse_args(argv)
    generator = load_generator(args.generator)
    if generator.attributes:
        raise SystemExit("benchmarks.truncation measures unconditional generators")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latents = torch.randn(args.samples, generator.latent_dim, generator=torch.Generator().manual_seed(99))

    real = extractor = None
    if args.work:
        from benchmarks.quality import features_of, score
        from lightning_faces.metrics import make_fid

        caches = sorted(Path(args.work).glob(f"real-{generator.image_size}-*.pt"))
        if not caches:
            raise SystemExit(
                f"{args.work} holds no held-out features at {generator.image_size}px: run the quality benchmark"
            )
        real = torch.load(caches[0], weights_only=True)
        extractor = make_fid(args.weights, resize="tensorflow").inception.eval()
        metric_args = argparse.Namespace(kid_subsets=50, kid_subset_size=min(500, args.samples))

    rows = []
    for way in ("first block", "latent"):
        shown = []
        for psi in args.psi:
            images = faces(generator, latents, psi, way)
            shown.append(images[:10])
            row = {"way": way, "psi": psi, "pixel spread": float(images.float().std(0).mean())}
            if real is not None:
                fake = features_of(images.split(100), extractor, torch.device("cpu"), f"{way} psi {psi}")
                scores = score(real, fake, metric_args)
                row |= {"KID x 1000": 1000 * scores["kid"], "FID": scores["fid"]}
            rows.append(row)
            print(row, flush=True)
        grid = out / f"{way.replace(' ', '-')}.png"
        save_image(torch.cat(shown).float() / 255, grid, nrow=10, padding=1)
        print(f"grid: {grid}")
    columns = ["way", "psi", "pixel spread"] + (["KID x 1000", "FID"] if real is not None else [])
    print(table(rows, columns))
    payload = {"generator": str(args.generator), "samples": args.samples, "rows": rows}
    write_json(out / "truncation.json", payload)
    return payload


if __name__ == "__main__":
    main()
