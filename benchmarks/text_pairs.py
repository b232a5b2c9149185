"""Sentence pairs (--text_pair_column) on real text, each mode reading the two texts as one input (a cross-encoder),
across training-set sizes. No pair set lies in ../shared/data, so the pairs are made from sst2's sentences, two
ways, in each of which neither text alone says the label (a model that read one would score chance):

- entail: a sentence and a statement about it, "It is positive." or "It is negative." (one pair of each per
  sentence); the label is whether the statement holds: sentiment asked as entailment, as in Wang et al. (2021),
  "Entailment as Few-Shot Learner".
- agree: two sentences; the label is whether they share a sentiment.

    python benchmarks/text_pairs.py --task entail --out benchmarks/results/text-pairs-entail.md
    python benchmarks/text_pairs.py --task agree --out benchmarks/results/text-pairs-agree.md

The pair files are made once (seeded, --data_seed) from sst2's train and validation splits. The grid runs as
`xfer-nlp compare` over those files (so it resumes when run again), and the report is compare's table. --tiny runs
a one-epoch smoke version on a slice (the test suite's).
"""

import argparse
import json
import random
from pathlib import Path

import xfer_nlp
from xfer_nlp.config import RunConfig
from xfer_nlp.data import data_root

from common import cpu_name, publish


def entail(rows: list[dict], rng: random.Random) -> list[dict]:
    made = [{"sentence1": r["text"], "sentence2": f"It is {word}.", "label": "yes" if r["label"] == value else "no"}
            for r in rows for word, value in (("negative", 0), ("positive", 1))]
    rng.shuffle(made)
    return made


def agree(rows: list[dict], rng: random.Random) -> list[dict]:
    rows = rows[:]
    rng.shuffle(rows)
    return [{"sentence1": a["text"], "sentence2": b["text"], "label": "same" if a["label"] == b["label"] else
             "different"} for a, b in zip(rows[0::2], rows[1::2])]


TASKS = {"entail": entail, "agree": agree}


def make_files(task: str, source: Path, out: Path, seed: int, limit: int | None) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        made = TASKS[task](rows[:limit] if limit else rows, rng)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
        counts[split] = {label: sum(r["label"] == label for r in made) for label in sorted({r["label"] for r in made})}
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="entail", help="which pairs to make (above)")
    parser.add_argument("--output_dir", help="a compare folder: the pair files and the cells (default runs/pairs-TASK)")
    parser.add_argument("--data_seed", type=int, default=0,
                        help="seed of the pairs' order (and, for agree, of which sentences pair up)")
    parser.add_argument("--modes", default="probe,finetune,lora,contrastive", help="comma list of compare variants")
    parser.add_argument("--train_sizes", default="100,500,2000", help="comma list of training-set sizes (pairs; all: "
                        "13,840 entail pairs, 3,460 agree pairs)")
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--out", help="also write the report (markdown) here")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 200 sentences, one epoch, one C")
    args = parser.parse_args(argv)
    out = Path(args.output_dir or f"runs/pairs-{args.task}")
    source = data_root(RunConfig()) / "sst2"
    counts = make_files(args.task, source, out / "data", args.data_seed, 200 if args.tiny else None)
    extra = {"num_train_epochs": 1, "min_train_steps": 0, "probe_c_grid": "1"} if args.tiny else {}
    xfer_nlp.compare(modes=args.modes, train_sizes=args.train_sizes, seeds=args.seeds, output_dir=out,
                     train_file=str(out / "data" / "train.jsonl"),
                     validation_file=str(out / "data" / "validation.jsonl"),
                     text_column="sentence1", text_pair_column="sentence2", **extra)
    report = (f"Task {args.task}: pairs made from {source} (data seed {args.data_seed}): {counts}. "
              f"{cpu_name()}.\n\n{(out / 'comparison.md').read_text()}")
    publish(report, args.out)


if __name__ == "__main__":
    main()
