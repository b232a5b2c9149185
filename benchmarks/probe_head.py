"""The probe's head at small n: does standardising 16 examples' features hurt, against L2-normalised features
(what SetFit's logistic head reads from a sentence-transformers encoder) and a fixed C?

    python benchmarks/probe_head.py --sizes 16,32,64,100,500 --draws 8 --out benchmarks/results/probe-head.md

The embedded encoder's sst2 features are encoded once by a probe run into OUTPUT_DIR/features; each draw is a
seeded, class-balanced subset of the training features, every head is fitted on the same draw with the package's
own L-BFGS logistic regression (probe.fit_logistic) and scored on the whole validation split.
"""

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import xfer_nlp
from xfer_nlp.probe import fit_logistic

from common import cpu_name, publish

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10, 30, 100]


def accuracy(head, x, y) -> float:
    w, b = head
    return ((x @ w.T + b).argmax(1) == y).float().mean().item()


def heads(x, y, xv, yv) -> dict[str, float]:
    """Validation accuracy of each head variant fitted on (x, y); grid variants keep the best C on validation,
    as the probe does."""
    def best(z, zv):
        return max(accuracy(fit_logistic(z, y, 2, c), zv, yv) for c in GRID)

    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z, zv = (x - mean) / std, (xv - mean) / std
    n, nv = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(xv, dim=1)
    return {"standardised, C on validation (the probe)": best(z, zv),
            "standardised, C=1": accuracy(fit_logistic(z, y, 2, 1.0), zv, yv),
            "L2-normalised, C on validation": best(n, nv),
            "L2-normalised, C=1 (SetFit's head)": accuracy(fit_logistic(n, y, 2, 1.0), nv, yv)}


def split_features(folder: Path) -> tuple[int, tuple[torch.Tensor, torch.Tensor]]:
    """(rows, (features, labels)) of one split's feature-cache folder, its shards joined in text order."""
    shards = [load_file(p) for p in sorted(folder.glob("texts-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))]
    labels = torch.cat([t["labels"] for t in shards]).long()
    return len(labels), (torch.cat([t["features"] for t in shards]).float(), labels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,32,64,100,500",
                        help="comma list of training-set sizes")
    parser.add_argument("--draws", type=int, default=8,
                        help="seeded class-balanced draws per size")
    parser.add_argument("--output_dir", default="runs/probe-head",
                        help="work folder (the encoded features go to OUTPUT_DIR/features)")
    parser.add_argument("--out", default=None,
                        help="markdown file for the table (default: print only)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="smoke tests: encode fewer texts")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    cache = out / "features"
    if not (out / "probe" / "results.json").is_file():
        xfer_nlp.run(mode="probe", dataset_name="sst2", output_dir=str(out / "probe"), overwrite_output_dir=True,
                     probe_c_grid="1", feature_cache_dir=str(cache), max_train_samples=args.max_train_samples)
    sizes = json.loads((out / "probe" / "results.json").read_text())["split_sizes"]
    by_rows = dict(split_features(folder) for folder in cache.iterdir() if folder.is_dir())
    (xt, yt), (xv, yv) = by_rows[sizes["train"]], by_rows[sizes["validation"]]
    scores: dict[int, dict[str, list[float]]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            idx = np.concatenate([rng.choice(np.flatnonzero(yt.numpy() == k), n // 2, replace=False) for k in (0, 1)])
            for name, acc in heads(xt[idx], yt[idx], xv, yv).items():
                scores.setdefault(n, {}).setdefault(name, []).append(acc)
    names = list(next(iter(scores.values())))
    lines = [f"# The probe's head at small n: sst2, {cpu_name()}", "",
             f"    python benchmarks/probe_head.py --sizes {args.sizes} --draws {args.draws}", "",
             f"Validation accuracy (872 sentences), mean ± sd over {args.draws} class-balanced draws of n training "
             "sentences; features of the embedded encoder (mean pooling, fp32).", "",
             "| n | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n, by_name in scores.items():
        lines.append(f"| {n} | " + " | ".join(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"
                                              if len(v) > 1 else f"{v[0]:.3f}" for v in by_name.values()) + " |")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
