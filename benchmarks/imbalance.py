"""Class weights on imbalanced data: sst2 with negatives cut to a tenth of the examples, with and without
--class_weights balanced, choosing the epoch (and the probe's C) on validation macro-F1.

    python benchmarks/imbalance.py --output_dir runs/imbalance-sst2 --seeds 0,1,2

The imbalanced train and validation files are made once (seeded, --data_seed): every positive example kept, and
a random sample of negatives so that they are --negative_share of each split. The grid then runs as
`xfer-nlp compare` over those files (so it resumes when run again), each variant at every --seeds training
seed, and the report is compare's table. --tiny runs a one-epoch smoke version on a slice (the test suite's).
"""

import argparse
import json
import random
from pathlib import Path

import xfer_nlp
from xfer_nlp.data import data_root
from xfer_nlp.config import RunConfig

VARIANTS = "probe,probe[class_weights=balanced],finetune,finetune[class_weights=balanced]"


def imbalanced(rows: list[dict], negative_share: float, rng: random.Random) -> list[dict]:
    positives = [r for r in rows if r["label"] == 1]
    negatives = [r for r in rows if r["label"] == 0]
    keep = round(len(positives) * negative_share / (1 - negative_share))
    out = positives + rng.sample(negatives, min(keep, len(negatives)))
    rng.shuffle(out)
    return out


def make_files(source: Path, out: Path, negative_share: float, seed: int, limit: int | None) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        rows = imbalanced(rows[:limit] if limit else rows, negative_share, rng)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        counts[split] = {"positive": sum(r["label"] for r in rows), "negative": sum(1 - r["label"] for r in rows)}
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/imbalance-sst2",
                        help="a compare folder: the imbalanced data set and the cells")
    parser.add_argument("--negative_share", type=float, default=0.1,
                        help="share of negative sentences kept in the training split")
    parser.add_argument("--data_seed", type=int, default=0,
                        help="seed of which negative sentences are kept")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma list of training seeds")
    parser.add_argument("--variants", default=VARIANTS,
                        help="comma list of compare variants (mode[key=value])")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 400 rows, one epoch, one C")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    source = data_root(RunConfig()) / "sst2"
    counts = make_files(source, out / "data", args.negative_share, args.data_seed, 400 if args.tiny else None)
    print(f"imbalanced sst2 from {source}: {counts}")
    extra = {"num_train_epochs": 1, "probe_c_grid": "1"} if args.tiny else {}
    result = xfer_nlp.compare(modes=args.variants, train_sizes="all", seeds=args.seeds, output_dir=out,
                              train_file=str(out / "data" / "train.jsonl"),
                              validation_file=str(out / "data" / "validation.jsonl"),
                              metric_for_best_model="macro_f1", **extra)
    print(result)


if __name__ == "__main__":
    main()
