"""Tables and plots read from a comparison folder's finished runs; never trains."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import XferError
from .modes import MODES
from . import runfolder
from .runfolder import read_results

logger = logging.getLogger(__name__)

# Rows from outside the registry: the peer a benchmark runs beside the modes (benchmarks/setfit_peer.py).
PEERS = {"setfit": "the setfit library (peer, benchmarks/setfit_peer.py) with its defaults"}
METRICS = ("validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1")


# What compare (and the setfit peer) write into cell.json before a cell's run; grids before --folds have no "fold".
CELL_KINDS = {"label": str, "mode": str, "size": str, "seed": int, "overrides": dict, "fold": int | None}


def _cell(cell_file: Path) -> dict | None:
    """A cell's cell.json, or None where it is not what compare writes."""
    cell = runfolder.read_json(cell_file)
    if not isinstance(cell, dict) or not all(runfolder.of_kind(cell.get(k), kind) for k, kind in CELL_KINDS.items()):
        return None
    return cell


def wall_seconds(output_dir: Path) -> float | None:
    """grid.json: the wall-clock seconds of the grid's cell runs, summed over the compare calls that built it; None
    where there is none, or it is damaged (then said: the sum starts again)."""
    path = Path(output_dir) / runfolder.GRID
    if not path.is_file():
        return None
    grid = runfolder.read_json(path)
    seconds = grid.get("wall_seconds") if isinstance(grid, dict) else None
    if not runfolder.of_kind(seconds, float):
        logger.warning("'%s' is damaged; the grid's wall-clock seconds are counted again from this call on.", path)
        return None
    return float(seconds)


def load_cells(output_dir: Path) -> pd.DataFrame:
    """One row per cell folder under output_dir/runs (status: done, failed, or unfinished)."""
    rows = []
    for cell_file in sorted((Path(output_dir) / "runs").glob(f"*/{runfolder.CELL}")):
        folder = cell_file.parent
        cell = _cell(cell_file)
        if cell is None:
            logger.warning("Cell folder %s is left out of the report: its %s is damaged. Delete that folder and run "
                           "compare again to run the cell afresh.", folder, runfolder.CELL)
            continue
        row = {**cell, "folder": folder.name, "status": "unfinished"}
        try:
            r = read_results(folder) if runfolder.state(folder) == "finished" else None
        except XferError as e:
            logger.warning("Cell %s counts as failed: %s", folder.name, e)
            r, row["status"] = None, "failed"
        if r is not None:
            row.update(status="done", train_samples=r.train_samples, train_seconds=r.train_seconds,
                       trainable_params=r.trainable_params, total_params=r.total_params,
                       peak_memory_mb=r.peak_memory_mb, hardware=r.hardware)
            for split, m in r.metrics.items():
                row.update({f"{split}_accuracy": m["accuracy"], f"{split}_macro_f1": m["macro_f1"]})
        elif (folder / runfolder.FAILED).is_file():  # failed, with or without checkpoints left
            row["status"] = "failed"
        rows.append(row)
    return pd.DataFrame(rows)


def size_key(size: str) -> float:
    """Sorts training-set sizes as numbers, "all" last."""
    return math.inf if size == "all" else int(size)


def _mean_sd(values: pd.Series, digits: int = 4) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summarise(cells: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Per label x size: mean and sd of every metric, mean seconds, parameters, memory."""
    done = cells[cells.status == "done"]
    rows = []
    for label in labels:
        for size in sorted(done[done.label == label]["size"].unique(), key=size_key):
            g = done[(done.label == label) & (done["size"] == size)]
            row = {"label": label, "mode": g["mode"].iloc[0], "size": size, "seeds": len(g),
                   "train_samples": int(g.train_samples.mean()), "train_seconds": g.train_seconds.mean(),
                   "trainable_params": int(g.trainable_params.iloc[0]), "peak_memory_mb": g.peak_memory_mb.max()}
            for metric in METRICS:
                if metric in g:
                    row[metric] = _mean_sd(g[metric])
                    row[f"{metric}_mean"] = g[metric].mean()
                    row[f"{metric}_sd"] = g[metric].std(ddof=1) if len(g) > 1 else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame, columns: dict[str, str]) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row.get(c, "—")) for c in columns) + " |")
    return "\n".join(lines)


def _starting_point(label: str, mode: str, overrides: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in overrides.items())
    start = MODES[mode].starting_point if mode in MODES else PEERS[mode]
    return start + (f" ({extra})" if extra else "")


def textbook_table(summary: pd.DataFrame, cells: pd.DataFrame, labels: list[str]) -> str:
    """The textbook's adjectives replaced by this grid's numbers."""
    sizes = sorted(summary["size"].unique(), key=size_key)
    header = "| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels)
    rows = {"Starting point": [], "Data needed (95% of own full-data accuracy)": [],
            "Training time at the largest size": [], "Trainable parameters": []}
    acc_rows = {size: [] for size in sizes}
    for label in labels:
        s = summary[summary.label == label].set_index("size")
        overrides = cells[cells.label == label]["overrides"].iloc[0]
        mode = cells[cells.label == label]["mode"].iloc[0]
        rows["Starting point"].append(_starting_point(label, mode, overrides))
        if s.empty:
            for key in list(rows)[1:]:
                rows[key].append("—")
            for size in sizes:
                acc_rows[size].append("—")
            continue
        largest = max(s.index, key=size_key)
        full = s.loc[largest, "validation_accuracy_mean"]
        needed = next(size for size in sorted(s.index, key=size_key)
                      if s.loc[size, "validation_accuracy_mean"] >= 0.95 * full)
        rows["Data needed (95% of own full-data accuracy)"].append(
            f"{s.loc[needed, 'train_samples']:,} examples" + (" (the largest tried)" if needed == largest else ""))
        rows["Training time at the largest size"].append(f"{s.loc[largest, 'train_seconds']:.0f} s")
        rows["Trainable parameters"].append(f"{s.loc[largest, 'trainable_params']:,}")
        for size in sizes:
            acc_rows[size].append(s.loc[size, "validation_accuracy"] if size in s.index else "—")
    lines = [header]
    for key, values in rows.items():
        lines.append(f"| {key} | " + " | ".join(values) + " |")
        if key == "Training time at the largest size":
            for size in sizes:
                lines.append(f"| Validation accuracy, n={size} | " + " | ".join(acc_rows[size]) + " |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, cells: pd.DataFrame, labels: list[str], output_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = cells[cells.status == "done"]
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in labels:
        s = summary[summary.label == label]
        if not s.empty:
            ax.errorbar(s.train_samples, s.validation_accuracy_mean, yerr=s.validation_accuracy_sd, marker="o",
                        capsize=3, label=label, color=colors[label])
    ax.set(xscale="log", xlabel="training examples (log scale)", ylabel="validation accuracy (mean ± sd over seeds)",
           title="Learning curve: accuracy against training-set size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, output_dir / "learning_curve.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in labels:
        c = done[done.label == label]
        if not c.empty:
            ax.scatter(c.train_seconds, c.validation_accuracy, label=label, color=colors[label], alpha=0.8,
                       s=[12 + 10 * math.log10(n) for n in c.train_samples])
    ax.set(xscale="log", xlabel="training seconds (log scale)", ylabel="validation accuracy",
           title="Accuracy against training time (one point per run; larger = more data)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, output_dir / "accuracy_vs_time.png"))

    sizes = sorted(summary["size"].unique(), key=size_key)
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.6 * len(sizes), 4), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for label in labels:
            s = summary[(summary.label == label) & (summary["size"] == size)]
            if not s.empty:
                ax.errorbar(s.trainable_params, s.validation_accuracy_mean, yerr=s.validation_accuracy_sd, marker="o",
                            capsize=3, linestyle="none", label=label, color=colors[label])
        ax.set(xscale="log", xlabel="trainable parameters (log scale)", title=f"n = {size}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Accuracy against trainable parameters")
    files.append(_save(fig, output_dir / "trainable_params.png"))
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_report(output_dir: str | Path, labels: Sequence[str] | None = None, first: Sequence[str] = ()) -> str:
    """Write comparison.csv, comparison.md and the plots from output_dir/runs; returns the summary table.
    `labels`: only these variants, in this order; else every variant in the folder, those in `first` first."""
    output_dir = Path(output_dir)
    cells = load_cells(output_dir)
    if cells.empty:
        raise XferError(f"'{output_dir}' holds no comparison cells (runs/*/cell.json). Run xfer-nlp compare first.")
    found = list(dict.fromkeys(cells.label))
    missing = [label for label in labels or [] if label not in found]
    if missing:
        raise XferError(f"No cell in '{output_dir}' is of the variant(s) {', '.join(missing)}. This folder holds: "
                        f"{', '.join(found)} (write each as compare's --modes named it).")
    labels = list(dict.fromkeys(labels or [*(f for f in first if f in found), *found]))
    cells = cells[cells.label.isin(labels)]
    cells.drop(columns=["overrides"]).to_csv(output_dir / "comparison.csv", index=False)
    summary = summarise(cells, labels)
    if summary.empty:
        raise XferError(f"No cell in '{output_dir}' has finished yet; nothing to report.")
    # Cross-validated cells (compare --folds): each seed runs once per fold, and the means are over both.
    folded = "fold" in cells and cells["fold"].notna().any()
    columns = {"label": "variant", "size": "n", "seeds": "runs (seeds x folds)" if folded else "seeds",
               "validation_accuracy": "val accuracy",
               "validation_macro_f1": "val macro-F1"}
    if "test_accuracy" in summary:
        columns.update(test_accuracy="test accuracy", test_macro_f1="test macro-F1")
    columns.update(train_seconds="train s", trainable_params="trainable params", peak_memory_mb="peak MB")
    shown = summary.assign(train_seconds=summary.train_seconds.map("{:.1f}".format),
                           trainable_params=summary.trainable_params.map("{:,}".format),
                           peak_memory_mb=summary.peak_memory_mb.map("{:.0f}".format))
    table = _markdown(shown, columns)
    files = plot(summary, cells, labels, output_dir)
    done, other = cells[cells.status == "done"], cells[cells.status != "done"]
    wall = wall_seconds(output_dir)
    # Cells of one grid can run on different machines (sessions apart): each is named, with its count.
    machines = done.hardware.value_counts(sort=False)
    hardware = machines.index[0] if len(machines) == 1 else "; ".join(f"{n} on {name}" for name, n in machines.items())
    lines = [f"# Comparison: {', '.join(labels)}", "",
             f"{len(done)} runs finished ({hardware}); training time summed over runs "
             f"{done.train_seconds.sum() / 60:.1f} min" + (f", the cells' runs {wall / 60:.1f} min "
                                                         f"wall-clock (a killed attempt's time is not counted)"
                                                         if wall is not None else "") + ".",
             f"Mean ± sd over seeds{' and cross-validation folds (test: each fold in turn)' if folded else ''}; n is "
             "the number of training examples ('all' = the whole training split).", "",
             table, "", "## The textbook table, measured", "", textbook_table(summary, cells, labels), "",
             *[f"![{f}]({f})" for f in files]]
    if not other.empty:
        lines += ["", "## Not finished", "", *[f"- {r.folder}: {r.status}" for r in other.itertuples()]]
    (output_dir / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table
