"""Transfer across domains: each mode trained on sst2 (all of it), scored on mr and on polarity2k, beside the same
mode trained in-domain on each target.

    python benchmarks/cross_domain.py --output_dir runs/cross-domain --out benchmarks/results/cross-domain.md

Every training run is `xfer_nlp.run(mode=M, dataset_name=D, seed=S)` with the recipe defaults into
OUTPUT_DIR/D-M; every cross-domain score is `xfer_nlp.evaluate(OUTPUT_DIR/sst2-M, dataset_name=T)` into
OUTPUT_DIR/sst2-M-on-T. mr has no official split: its validation split is the seeded hold-out that a run on mr makes
(same --seed, same --validation_split_ratio), so the sst2 model and the mr model are scored on the same snippets.
polarity2k is scored on its test split; the reviews are read as each run chose (auto: head+tail when they are
longer than --max_seq_length). A folder that already holds a finished run or evaluation is read, not redone, so the
benchmark resumes. contrastive at full data would take hours of pair steps here, so it runs --pair_iterations 1
(one same-label and one other-label partner per text) and its row says so.
"""

import argparse
import json
from pathlib import Path

import xfer_nlp
from xfer_nlp.runfolder import EVALUATION

from common import cpu_name, publish

MODES = "probe,finetune,lora,contrastive,scratch"  # scratch last: the costliest on a CPU
TARGETS = {"mr": "validation", "polarity2k": "test"}
# Budgets for modes whose full-data cost is out of proportion on a 2-core CPU (stated in the table).
BUDGET = {"contrastive": {"pair_iterations": 1}}


def trained(out: Path, mode: str, dataset: str, seed: int, tiny: dict, report_only: bool) -> dict | None:
    folder = out / f"{dataset}-{mode}"
    if not (folder / "results.json").is_file():
        if report_only:
            return None
        xfer_nlp.run(mode=mode, dataset_name=dataset, seed=seed, output_dir=str(folder), overwrite_output_dir=True,
                     **BUDGET.get(mode, {}), **tiny)
    return json.loads((folder / "results.json").read_text())


def scored(out: Path, mode: str, target: str, seed: int, report_only: bool) -> dict | None:
    folder = out / f"sst2-{mode}-on-{target}"
    if not (folder / EVALUATION).is_file():
        if report_only or not (out / f"sst2-{mode}" / "results.json").is_file():
            return None
        xfer_nlp.evaluate(out / f"sst2-{mode}", dataset_name=target, seed=seed, output_dir=str(folder),
                          overwrite_output_dir=True)
    return json.loads((folder / EVALUATION).read_text())


def metric(record: dict | None, split: str) -> dict | None:
    return record["metrics"][split] if record else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/cross-domain",
                        help="a compare folder for the cells (finished cells are kept and skipped)")
    parser.add_argument("--modes", default=MODES,
                        help="comma list of modes or compare variants (mode[key=value])")
    parser.add_argument("--seed", type=int, default=0,
                        help="the training seed of every cell")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    parser.add_argument("--report_only", action="store_true", help="write the table from the runs already "
                                                                   "finished ('not run yet' for the others); train nothing")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 200 training texts, 2 steps (probe: C=1)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    rows = []
    for mode in args.modes.split(","):
        tiny = ({"max_train_samples": 200} | ({"probe_c_grid": "1"} if mode == "probe" else {"max_steps": 2})
                if args.tiny else {})
        row = {"mode": mode,
               "sst2": metric(trained(out, mode, "sst2", args.seed, tiny, args.report_only), "validation")}
        for target, split in TARGETS.items():
            row[f"sst2->{target}"] = metric(scored(out, mode, target, args.seed, args.report_only), split)
            row[target] = metric(trained(out, mode, target, args.seed, tiny, args.report_only), split)
        rows.append(row)
    publish(report(rows, args), args.out)


def report(rows: list[dict], args) -> str:
    lines = [f"# Cross-domain transfer: trained on sst2, scored on mr and polarity2k (seed {args.seed})", "",
             f"{cpu_name()}. Accuracy (macro-F1); mr: the seeded validation hold-out; polarity2k: its test split "
             "(200 full-length reviews).", "",
             "    python benchmarks/cross_domain.py " + (f"--output_dir {args.output_dir} --modes {args.modes} "
                                                        f"--seed {args.seed}" + (" --tiny" if args.tiny else "")),
             "", "The sst2 models read every text as they were trained to (the first 128 tokens: sst2's sentences are "
             "short), as `xfer-nlp evaluate` and predict do; the in-domain polarity2k models chose head+tail "
             "(--truncation auto).", "",
             "| mode | sst2 (in-domain) | sst2 → mr | mr (in-domain) | sst2 → polarity2k | polarity2k (in-domain) |",
             "|---|---|---|---|---|---|"]
    cell = lambda m: f"{m['accuracy']:.4f} ({m['macro_f1']:.4f})" if m else "not run yet"  # noqa: E731
    for r in rows:
        label = r["mode"] + "".join(f" [{k}={v}]" for k, v in BUDGET.get(r["mode"], {}).items())
        lines.append(f"| {label} | {cell(r['sst2'])} | {cell(r['sst2->mr'])} | {cell(r['mr'])} | "
                     f"{cell(r['sst2->polarity2k'])} | {cell(r['polarity2k'])} |")
    lines += ["", "The gap between a target's two columns is what training on the other domain costs; "
              "sst2 and mr are both movie-review snippets, polarity2k is whole reviews read through the same window."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
