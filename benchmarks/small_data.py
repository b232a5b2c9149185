"""Issue 22's checks, read off the small-data grids: the best xfer_nlp mode and contrastive against the setfit peer.

    for s in 0 1 2; do
      xfer-nlp compare --modes probe,finetune,lora,contrastive,scratch --train_sizes 16,32,64,100 --seeds $s \\
          --dataset_name sst2 --output_dir benchmarks/results/grid-sst2
      python benchmarks/setfit_peer.py --dataset_name sst2 --train_sizes 16,32,64,100 --seeds $s \\
          --output_dir benchmarks/results/grid-sst2
    done                                         # and the same with mr, into grid-mr
    python benchmarks/small_data.py benchmarks/results/grid-sst2 benchmarks/results/grid-mr \\
        --out benchmarks/results/small-data.md

This script trains nothing: it reads each grid's finished cells (compare's `comparison.csv` format, through
`xfer_nlp.report.load_cells`) and their results.json, and writes per size: the mean validation accuracy of every
variant over the seeds it has (a mode's own cells and its step-capped ones in one column, any other variant in a
column of its own), the best xfer_nlp mode or variant against setfit (also paired by seed: a seed draws the same
training subset for every variant, so the seed-by-seed difference shows whether a gap outgrows the subset's luck),
contrastive against setfit in accuracy and seconds, and finetune against the probe. A cell run under a
stated step budget (`setfit_peer.py --max_steps`, or a variant such as `contrastive[max_steps=1250]` where a full
run would take hours here) says so in its table entry.

Seconds, said plainly: an xfer_nlp run's train_seconds include scoring the validation split (contrastive and the
probe encode it to choose the head's C; the loop modes evaluate on it), while setfit's `trainer.train()` never
reads it and the peer scores it afterwards (its cells' `validation_seconds`). So the speed is shown twice: training
alone (setfit's train_seconds over contrastive's), and per run, to a model with its validation score (setfit's
training plus its scoring of validation, over contrastive's train_seconds).

Selection on validation, said plainly: xfer_nlp's loop modes keep their best evaluation (on the validation split
they are scored on) and the probe's head picks its C on it too; the setfit peer picks nothing. So each check is
also shown without any selection: the loop modes' last evaluation (their final weights) and the fitted heads (probe,
contrastive) at C = 1, scikit-learn's default that setfit's LogisticRegression uses (the probe's objective is
scikit-learn's).
"""

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from xfer_nlp.report import load_cells, size_key

from common import cpu_name, publish

PEER = "setfit"
MODES = ("probe", "finetune", "lora", "contrastive", "scratch")


def validation_scored(record: dict) -> float:
    """Seconds from the start of training to a model with its validation score (NaN where a peer cell predates
    the record of its scoring)."""
    if record.get("mode") != PEER:
        return record["train_seconds"]  # scored inside the run's training seconds
    scoring = record.get("validation_seconds")
    return math.nan if scoring is None else record["train_seconds"] + scoring


def selection_free(record: dict) -> float | None:
    """The cell's validation accuracy with nothing chosen on validation (None where nothing was chosen anyway)."""
    if record.get("mode") in ("finetune", "lora", "scratch") and record.get("history"):
        return record["history"][-1].get("validation_accuracy")
    if record.get("mode") in ("probe", "contrastive"):
        fitted = record.get("probe") or {}
        if fitted.get("C_chosen_on", "accuracy") != "accuracy":
            return math.nan  # validation_by_C then holds another metric: the head's accuracy at C = 1 is unknown
        by_c = fitted.get("validation_by_C") or {}
        return next((v for c, v in by_c.items() if math.isclose(float(c), 1.0)), None)
    return None


def cells(grid: Path) -> pd.DataFrame:
    done = load_cells(grid)
    done = done[done.status == "done"].copy()
    records = [json.loads((grid / "runs" / f / "results.json").read_text()) for f in done.folder]
    # None: nothing was chosen on validation, so the figure is the cell's own; NaN (left empty): not known
    done["free"] = [acc if free is None else free for free, acc in
                    zip(map(selection_free, records), done.validation_accuracy)]
    done["scored_seconds"] = [validation_scored(r) for r in records]
    # A cell run under a stated step budget (setfit_peer.py --max_steps, a variant such as contrastive[max_steps=N])
    overrides = [o if isinstance(o, dict) else {} for o in done["overrides"]]
    done["cap"] = [o.get("max_steps") for o in overrides]
    # counts as its mode, the cap noted in its entry; any other variant (finetune[head_init=probe,...]) is a column
    # of its own under its label.
    done["mode"] = [m if set(o) <= {"max_steps"} else label for m, o, label in zip(done["mode"], overrides,
                                                                                     done["label"])]
    return done


def per_size(done: pd.DataFrame) -> pd.DataFrame:
    """mode x size -> mean accuracy (selected and selection-free), mean seconds, seeds."""
    return done.groupby(["mode", "size"]).agg(acc=("validation_accuracy", "mean"), sd=("validation_accuracy", "std"),
                                              free=("free", "mean"), seconds=("train_seconds", "mean"),
                                              seeds=("seed", "nunique"), cap=("cap", "max"))


def speedup(done: pd.DataFrame, size: str, seconds: str = "train_seconds") -> str:
    """setfit's `seconds` over contrastive's, from the seeds whose two cells ran on one kind of machine (the same
    hardware string); cells of a grid filled over several sessions may not have, and then the report says so."""
    cells = done[done["size"] == size].set_index("seed")
    con, peer = cells[cells["mode"] == "contrastive"], cells[cells["mode"] == PEER]
    peer = peer[peer[seconds].notna()]
    if peer.empty:
        return "—"
    seeds = [s for s in con.index.intersection(peer.index) if con.hardware[s] == peer.hardware[s]]
    if not seeds:  # results.json named no CPU model before 2026-12-03, so older pairs cannot be matched
        return f"{peer[seconds].mean() / con[seconds].mean():.2f}x (machines differ or unrecorded)"
    ratio = peer[seconds][seeds].mean() / con[seconds][seeds].mean()
    return f"{ratio:.2f}x" + ("" if len(seeds) == len(con) else f" (seed{'s' * (len(seeds) > 1)} "
                                                               f"{', '.join(map(str, seeds))}: one machine)")


def paired(done: pd.DataFrame, mode: str, size: str) -> str:
    """mode − setfit seed by seed (a seed draws the same training subset for both), so the subset's own luck cancels:
    mean ± sd of the differences and how many seeds the mode is at or above the peer."""
    cells = done[done["size"] == size].set_index("seed")
    ours, peer = cells[cells["mode"] == mode].validation_accuracy, cells[cells["mode"] == PEER].validation_accuracy
    diff = (ours - peer).dropna()
    if diff.empty:
        return "—"
    sd = f" ± {diff.std():.3f}" if len(diff) > 1 else ""
    return f"{diff.mean():+.3f}{sd} ({(diff >= 0).sum()} of {len(diff)} seeds ≥)"


def report(grid: Path) -> list[str]:
    done = cells(grid)
    if done.empty:
        return [f"## {grid.name}", "", "No finished cells yet.", ""]
    table = per_size(done)
    sizes = sorted(done["size"].unique(), key=size_key)
    present = table.index.get_level_values(0)
    modes = [m for m in MODES if m in present] + sorted(set(present) - set(MODES) - {PEER})
    has_peer = PEER in table.index.get_level_values(0)
    lines = [f"## {grid.name}", "",
             "Validation accuracy, mean ± sd over seeds (seeds in brackets where fewer than 3); in italics, the same "
             "with nothing chosen on validation (last evaluation; a fitted head at C = 1).", "",
             "| n | " + " | ".join(modes + ([f"{PEER} (peer)"] if has_peer else [])) + " |",
             "|---|" + "---|" * (len(modes) + has_peer)]

    def cell(mode, size):
        if (mode, size) not in table.index:
            return "—"
        row = table.loc[(mode, size)]
        sd = "" if row.seeds < 2 else f" ± {row.sd:.3f}"
        seeds = "" if row.seeds >= 3 else f" [{int(row.seeds)} seed{'s' if row.seeds > 1 else ''}]"
        free = f" *{row.free:.3f}*" if abs(row.free - row.acc) > 5e-4 else ""
        cap = f" (capped at {int(row.cap):,} steps)" if pd.notna(row.cap) else ""
        return f"{row.acc:.3f}{sd}{seeds}{free}{cap}"

    for size in sizes:
        lines.append(f"| {size} | " + " | ".join(cell(m, size) for m in modes + ([PEER] if has_peer else [])) + " |")
    lines += ["", "| n | best xfer_nlp mode | vs setfit | the same, paired by seed | contrastive − setfit | "
              "contrastive s | setfit s | setfit s / contrastive s | per run, validation scored |",
              "|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        ours = table.loc[[(m, size) for m in modes if (m, size) in table.index]]
        best = ours.acc.idxmax()[0]
        if has_peer and (PEER, size) in table.index:
            peer = table.loc[(PEER, size)]
            vs = f"{ours.acc.max() - peer.acc:+.3f} (no selection {ours.free.max() - peer.acc:+.3f}) | " \
                 f"{paired(done, best, size)}"
            if ("contrastive", size) in table.index:
                con = table.loc[("contrastive", size)]
                delta = f"{con.acc - peer.acc:+.3f} (C = 1: {con.free - peer.acc:+.3f})"
                timing = (f"{con.seconds:.1f} | {peer.seconds:.1f} | {speedup(done, size)} | "
                          f"{speedup(done, size, 'scored_seconds')}")
            else:
                delta, timing = "—", "— | — | — | —"
        else:
            vs, delta, timing = "— | —", "—", "— | — | — | —"
        lines.append(f"| {size} | {best} {ours.acc.max():.3f} | {vs} | {delta} | {timing} |")
    if ("finetune", "100") in table.index and ("probe", "100") in table.index:
        ft, pr = table.loc[("finetune", "100")], table.loc[("probe", "100")]
        lines += ["", f"finetune at n=100: {ft.acc:.3f} (last evaluation {ft.free:.3f}) against the probe's "
                      f"{pr.acc:.3f}: {ft.acc - pr.acc:+.3f}."]
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", help="compare folders (each with runs/ holding the cells)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    lines = ["# Small data: xfer_nlp's modes and the setfit peer", "",
             f"Read from finished cells by `python benchmarks/small_data.py {' '.join(args.grids)}`; the cells ran on "
             f"{cpu_name()} (this machine when the report was written; each cell's results.json names its own).", ""]
    for grid in args.grids:
        lines += report(Path(grid))
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
