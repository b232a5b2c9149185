"""Tables and plots read from a comparison folder's finished runs; never trains."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import XferError
from .evaluation import plain_log_ticks, pyplot, save_figure
from .modes import MODES
from .schedules import frozen_phrase
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
    extra = ", ".join(f"{frozen_phrase(int(v))} frozen" if k == "freeze_layers" else f"{k}={v}"
                      for k, v in overrides.items())
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


# Each variant's marker, beside its colour: tab10 has ten colours, and a grid may hold more variants.
MARKERS = "osD^vP*Xhp<>"


def _styles(labels: list[str], peers: set[str]) -> dict[str, dict]:
    """A colour and a marker per variant; a peer's line is dashed, so the modes and the peer read apart."""
    import matplotlib

    colours = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: {"color": colours(i % colours.N), "marker": MARKERS[i % len(MARKERS)],
                    "linestyle": "--" if label in peers else "-"} for i, label in enumerate(labels)}


def _dodge(i: int, n: int, decades: float = 0.05) -> float:
    """A factor that spreads n variants' points around one x on a log axis, `decades` wide in all, so that points
    at the same x (one training-set size, one parameter count) and their error bars do not hide each other."""
    return 10 ** (decades * (i / (n - 1) - 0.5)) if n > 1 else 1.0


def _legend(fig, axes, labels: list[str]) -> None:
    """Every variant drawn in any of `axes`, once, beside the plot rather than over its points."""
    handles = {}
    for ax in axes:
        handles.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
    fig.legend([handles[k] for k in labels if k in handles], [k for k in labels if k in handles], fontsize=8,
               loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)


def plot(summary: pd.DataFrame, cells: pd.DataFrame, labels: list[str], output_dir: Path) -> list[str]:
    from matplotlib.ticker import FuncFormatter, NullLocator

    plt = pyplot()
    done = cells[cells.status == "done"]
    style = _styles(labels, set(cells.label[cells["mode"].isin(PEERS)]))
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, label in enumerate(labels):
        s = summary[summary.label == label]
        if not s.empty:
            ax.errorbar(s.train_samples * _dodge(i, len(labels)), s.validation_accuracy_mean,
                        yerr=s.validation_accuracy_sd, capsize=2, elinewidth=1, markersize=5, label=label,
                        **style[label])
    ax.set(xscale="log", xlabel="training examples (log scale)", ylabel="validation accuracy (mean ± sd over seeds)",
           title="Learning curve: accuracy against training-set size")
    # Ticks at the grid's sizes, written plainly (matplotlib's own read 2×10¹ on a grid of 16 to 100)
    ax.set_xticks(sorted(summary.groupby("size").train_samples.median()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)
    _legend(fig, [ax], labels)
    files.append(_save(fig, output_dir / "learning_curve.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in labels:
        c = done[done.label == label]
        if not c.empty:
            ax.scatter(c.train_seconds, c.validation_accuracy, label=label, color=style[label]["color"],
                       marker=style[label]["marker"], alpha=0.8, s=[12 + 10 * math.log10(n) for n in c.train_samples])
    ax.set(xscale="log", xlabel="training seconds (log scale)", ylabel="validation accuracy",
           title="Accuracy against training time (one point per run; larger = more data)")
    plain_log_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    _legend(fig, [ax], labels)
    files.append(_save(fig, output_dir / "accuracy_vs_time.png"))

    # One panel per training-set size, at most four to a row, so that each stays readable at a page's width.
    sizes = sorted(summary["size"].unique(), key=size_key)
    cols = min(4, len(sizes))
    rows = math.ceil(len(sizes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), sharey=True, squeeze=False)
    for ax, size in zip(axes.flat, sizes):
        for i, label in enumerate(labels):
            s = summary[(summary.label == label) & (summary["size"] == size)]
            if not s.empty:
                ax.errorbar(s.trainable_params * _dodge(i, len(labels), decades=0.4), s.validation_accuracy_mean,
                            yerr=s.validation_accuracy_sd, capsize=2, elinewidth=1, markersize=5, label=label,
                            **{**style[label], "linestyle": "none"})
        ax.set(xscale="log", title=f"n = {size}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(sizes):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("trainable parameters (log scale)")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy")
    _legend(fig, axes.flat, labels)
    fig.suptitle("Accuracy against trainable parameters\n(variants that train as many drawn side by side)", fontsize=11)
    files.append(_save(fig, output_dir / "trainable_params.png"))
    return files


def _save(fig, path: Path) -> str:
    save_figure(fig, path)
    return path.name


def write_report(output_dir: str | Path, labels: Sequence[str] | None = None, first: Sequence[str] = ()) -> str:
    """Write comparison.csv, comparison.md and the plots from output_dir/runs; returns the summary table.
    `labels`: only these variants, in this order; else every variant in the folder, those in `first` first."""
    output_dir = Path(output_dir).expanduser()
    if not output_dir.is_dir():
        raise XferError(f"'{output_dir}' is not a folder. Pass the --output_dir of an xfer-nlp compare.")
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
