"""Sentence pairs (--text_pair_column) on real text: do two sst2 sentences share a sentiment? Each mode, as a
cross-encoder reading the two sentences as one input, across training-set sizes.

    python benchmarks/text_pairs.py --output_dir runs/pairs-sst2 --out benchmarks/results/text-pairs.md

The pair files are made once (seeded, --data_seed): sst2's train sentences shuffled and taken two at a time, and
likewise its validation sentences; a pair is "same" when both sentences have the same label, else "different"
(about half each). Neither sentence alone says whether they agree, so a model that read only one would score
chance. The grid runs as `xfer-nlp compare` over those files (so it resumes when run again), and the report is
compare's table. --tiny runs a one-epoch smoke version on a slice (the test suite's).
"""

import argparse
import json
import random
from pathlib import Path

import xfer_nlp
from xfer_nlp.config import RunConfig
from xfer_nlp.data import data_root

from common import cpu_name, publish


def pairs(rows: list[dict], rng: random.Random) -> list[dict]:
    rows = rows[:]
    rng.shuffle(rows)
    return [{"sentence1": a["text"], "sentence2": b["text"], "label": "same" if a["label"] == b["label"] else
             "different"} for a, b in zip(rows[0::2], rows[1::2])]


def make_files(source: Path, out: Path, seed: int, limit: int | None) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        made = pairs(rows[:limit] if limit else rows, rng)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
        counts[split] = {label: sum(r["label"] == label for r in made) for label in ("same", "different")}
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/pairs-sst2", help="a compare folder: the pair files and the cells")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of which sentences are paired")
    parser.add_argument("--modes", default="probe,finetune,lora,contrastive", help="comma list of compare variants")
    parser.add_argument("--train_sizes", default="100,500,all", help="comma list of training-set sizes (pairs)")
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--out", help="also write the report (markdown) here")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 200 sentences, one epoch, one C")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    source = data_root(RunConfig()) / "sst2"
    counts = make_files(source, out / "data", args.data_seed, 200 if args.tiny else None)
    extra = {"num_train_epochs": 1, "min_train_steps": 0, "probe_c_grid": "1"} if args.tiny else {}
    xfer_nlp.compare(modes=args.modes, train_sizes=args.train_sizes, seeds=args.seeds, output_dir=out,
                              train_file=str(out / "data" / "train.jsonl"),
                              validation_file=str(out / "data" / "validation.jsonl"),
                              text_column="sentence1", text_pair_column="sentence2", **extra)
    report = (f"Same sentiment? sst2 sentence pairs from {source} (data seed {args.data_seed}): {counts}. "
              f"{cpu_name()}.\n\n{(out / 'comparison.md').read_text()}")
    publish(report, args.out)


if __name__ == "__main__":
    main()
