"""What `--early_stopping_patience P` would have cost and saved on a finished compare grid, read off its histories.

    python benchmarks/early_stopping.py benchmarks/results/grid-sst2 benchmarks/results/grid-mr \\
        --out benchmarks/results/early-stopping.md

This script trains nothing. Early stopping changes nothing before the step where it stops (the learning-rate
schedule is planned for the whole run either way), so a finished run's history of evaluations says exactly what
the same run would have kept and when it would have stopped under a patience of P: it stops at the P-th
evaluation in a row without a better validation figure (`--metric_for_best_model`, strictly greater: the loop's own
`keep_or_stop`) and keeps the best evaluation before it. Each plain finetune, lora and scratch cell (no variant
overrides) with at least two evaluations counts; the figures are validation's as the evaluations scored them (under
bf16 autocast where the run trained so), and seconds are the history's, evaluations included.
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from xfer_nlp.loop import keep_or_stop
from xfer_nlp.report import load_cells, size_key

from common import publish

MODES = ("finetune", "lora", "scratch")


def stopped(history: list[dict], metric: str, patience: int | None) -> tuple[float, dict]:
    """(the kept evaluation's figure, the evaluation the run ends at) under `patience` (None: never stops)."""
    best, since = None, 0
    for record in history:
        keep, since, stop = keep_or_stop(best, record[metric], since, patience)
        if keep:
            best = record[metric]
        if stop:
            return best, record
    return best, history[-1]


def effects(grid: Path, patiences: list[int]) -> list[dict]:
    """One row per cell and patience: the change in the kept figure, and the share of steps and seconds run."""
    done = load_cells(grid)
    done = done[(done.status == "done") & done["mode"].isin(MODES)]
    rows = []
    for cell in done.itertuples():
        if isinstance(cell.overrides, dict) and cell.overrides:
            continue  # a variant (LP-FT, a step cap, ...) is not the mode as shipped
        record = json.loads((grid / "runs" / cell.folder / "results.json").read_text())
        history = record.get("history") or []
        if len(history) < 2:
            continue
        metric = f"validation_{record['config'].get('metric_for_best_model', 'accuracy')}"
        full, last = stopped(history, metric, None)
        for p in patiences:
            kept, end = stopped(history, metric, p)
            rows.append(dict(mode=cell.mode, size=str(cell.size), seed=cell.seed, patience=p, delta=kept - full,
                             steps=end["step"] / last["step"], seconds=end["seconds"] / last["seconds"],
                             evaluations=len(history)))
    return rows


def table(grid: Path, rows: list[dict], patiences: list[int]) -> list[str]:
    groups = sorted({(r["mode"], r["size"]) for r in rows}, key=lambda g: (MODES.index(g[0]), size_key(g[1])))
    lines = [f"### {grid.name}", "", "Per mode and training-set size, over its seeds: the kept validation accuracy's "
             "change against the full run (mean, worst) and the share of the run's seconds spent.", "",
             "| mode | n | seeds | evaluations | " + " | ".join(f"patience {p}" for p in patiences) + " |",
             "|---|---|---|---|" + "---|" * len(patiences)]
    for mode, size in groups:
        cells = [r for r in rows if (r["mode"], r["size"]) == (mode, size)]
        entries = []
        for p in patiences:
            at = [r for r in cells if r["patience"] == p]
            entries.append(f"{statistics.mean(r['delta'] for r in at):+.4f} / {min(r['delta'] for r in at):+.4f}, "
                           f"{statistics.mean(r['seconds'] for r in at):.0%}")
        seeds = len({r["seed"] for r in cells})
        lines.append(f"| {mode} | {size} | {seeds} | {cells[0]['evaluations']} | " + " | ".join(entries) + " |")
    return lines


def summary(rows: list[dict], patiences: list[int]) -> list[str]:
    lines = ["| patience | cells | cells that keep a worse evaluation | mean change | worst change | seconds spent "
             "(mean share) |", "|---|---|---|---|---|---|"]
    for p in patiences:
        at = [r for r in rows if r["patience"] == p]
        worse = sum(r["delta"] < 0 for r in at)
        lines.append(f"| {p} | {len(at)} | {worse} | {statistics.mean(r['delta'] for r in at):+.4f} | "
                     f"{min(r['delta'] for r in at):+.4f} | {statistics.mean(r['seconds'] for r in at):.0%} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", help="compare output folders (their runs/*/results.json are read)")
    parser.add_argument("--patience", default="2,3,5", help="comma list of patiences, in evaluations")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    args = parser.parse_args(argv)
    patiences = [int(p) for p in args.patience.split(",")]
    per_grid = {Path(g): effects(Path(g), patiences) for g in args.grids}
    every = [r for rows in per_grid.values() for r in rows]
    if not every:
        parser.error("no finished finetune, lora or scratch cell with two or more evaluations in "
                     + ", ".join(args.grids))
    lines = ["# Early stopping, simulated on finished grids", "",
             "    " + shlex.join(["python", "benchmarks/early_stopping.py", *(sys.argv[1:] if argv is None else argv)]),
             "", "Over every counted cell of these grids (accuracy changes in absolute terms: -0.0100 is one point; "
             "seconds spent: the share of the full run's):", "",
             *summary(every, patiences), ""]
    for grid, rows in per_grid.items():
        if rows:
            lines += [*table(grid, rows, patiences), ""]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
