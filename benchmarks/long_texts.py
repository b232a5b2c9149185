"""Long reviews: how to read them, measured on polarity2k, and what a 10,000-word text costs in memory.

    python benchmarks/long_texts.py --modes probe,finetune --seeds 0 --output_dir runs/long-polarity2k --out benchmarks/results/long-polarity2k.md
    python benchmarks/long_texts.py --memory --output_dir runs/long-memory --out benchmarks/results/long-memory.md

The grid is `xfer-nlp compare` on polarity2k (1,600 training, 200 validation, 200 test reviews; train all of it)
with one variant per mode and reading (SETTINGS), so it resumes when run again; the table adds each cell's
test accuracy and how fast `xfer_nlp.predict` labels the 200 test reviews with the run's own reading (model
loading included, median of 3 calls). Validation chooses (the epoch, the probe's C); test is the report.
Fine-tuning at 512 tokens is slow on a CPU (15-24 s a step on 2 cores, 250 steps a cell): --keep_freed_memory
trains with that run flag (8-11 s a step, but 22 GB within 50 steps), and --report_only tabulates what is
finished, so the grid can fill over sessions.

--memory runs probe, finetune (4 steps) and predict in fresh processes on texts of 1,000 and 10,000 words made by
joining polarity2k reviews, chunked into 512-token windows, and reports each process's peak RSS: with every window
batched like any other row, the 10,000-word text should cost about what the 1,000-word one does.
"""

import argparse
import json
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import xfer_nlp
from xfer_nlp.config import RunConfig
from xfer_nlp.data import data_root
from xfer_nlp.report import write_report

from common import cpu_name, publish, run_measured

SETTINGS = {
    "head-128": "truncation=head,max_seq_length=128",
    "head+tail-128": "truncation=head+tail,max_seq_length=128",  # what --truncation auto picks for long texts
    "head-256": "truncation=head,max_seq_length=256",
    "head-512": "truncation=head,max_seq_length=512",
    "head+tail-512": "truncation=head+tail,max_seq_length=512",
    "chunk-512": "long_text=chunk,max_seq_length=512",
    # the step budget of the 512-token truncations (250 steps of 32 rows): 1.75 epochs of polarity2k's 4,586
    # training windows, where the uncapped recipe trains 3 (430 steps, 75 minutes a cell on 2 cores)
    "chunk-512-250steps": "long_text=chunk,max_seq_length=512,max_steps=250",
}


TINY = {"probe": "probe_c_grid=1", "finetune": "max_steps=2"}  # --tiny: one C, two steps


def parse(spec: str) -> dict[str, str]:
    """'a=1,b=2' (a SETTINGS or TINY entry) as {'a': '1', 'b': '2'}."""
    return dict(kv.split("=") for kv in spec.split(","))


def variants(modes: list[str], settings: list[str], tiny: bool) -> str:
    """compare's variants, one per mode and setting; --tiny's extras replace a setting's own (chunk-512-250steps)."""
    def variant(mode: str, setting: str) -> str:
        overrides = {**parse(SETTINGS[setting]), **(parse(TINY[mode]) if tiny else {})}
        return f"{mode}[{','.join(f'{k}={v}' for k, v in overrides.items())}]"
    return ",".join(variant(mode, s) for mode in modes for s in settings)


def setting_of(overrides: dict) -> str | None:
    """Which SETTINGS entry a cell's overrides are (its --tiny extras aside)."""
    tiny = {k: v for extra in TINY.values() for k, v in parse(extra).items()}
    reading = {k: str(v) for k, v in overrides.items() if tiny.get(k) != str(v)}
    return next((name for name, spec in SETTINGS.items() if parse(spec) == reading), None)


def predict_seconds(run_dir: Path, texts: list[str]) -> float:
    """Median of 3 predict calls, measured once per cell and kept beside its results.json (predict.json), so a grid
    resumed in a later session, without the models, still reports it."""
    saved = run_dir / "predict.json"
    if saved.is_file():
        return json.loads(saved.read_text())["seconds"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        xfer_nlp.predict(run_dir, texts)
        times.append(time.perf_counter() - start)
    saved.write_text(json.dumps({"seconds": statistics.median(times), "texts": len(texts), "machine": cpu_name()}) + "\n")
    return statistics.median(times)


def grid(args) -> str:
    modes, settings = args.modes.split(","), args.settings.split(",")
    out = Path(args.output_dir)
    if not args.report_only:
        xfer_nlp.compare(modes=variants(modes, settings, args.tiny), train_sizes="64" if args.tiny else "all",
                         seeds=args.seeds, output_dir=out, dataset_name="polarity2k",
                         keep_freed_memory=args.keep_freed_memory)  # its report covers the whole folder
    elif (out / "runs").is_dir():
        write_report(out)
    test = [json.loads(line)["text"] for line in (data_root(RunConfig()) / "polarity2k" / "test.jsonl").read_text(
        encoding="utf-8").splitlines()][: 16 if args.tiny else None]
    rows = []
    for cell in sorted((out / "runs").glob("*/cell.json")):
        meta = json.loads(cell.read_text())
        results_file, setting = cell.parent / "results.json", setting_of(meta["overrides"])
        if meta["mode"] not in modes or setting not in settings or not results_file.is_file():
            continue
        results = json.loads(results_file.read_text())
        rows.append({"mode": meta["mode"], "setting": setting, "seed": meta["seed"],
                     "validation": results["metrics"]["validation"]["accuracy"],
                     "test": results["metrics"]["test"]["accuracy"], "train_s": results["train_seconds"],
                     "predict_s": predict_seconds(cell.parent, test), "reading": results["reading"],
                     "hardware": results.get("hardware", "not recorded")})
    # The cells' own machines, not this one: --report_only tabulates cells that ran in earlier sessions.
    machines = Counter(r["hardware"] for r in rows)
    lines = ["# Reading long reviews: polarity2k", "",
             f"    {args.command}", "",
             "Cells ran on: " + ("; ".join(f"{hw} ({n} cells)" for hw, n in machines.most_common()) or "none yet")
             + ".", "",
             f"Accuracy (mean ± sd over the seeds run); predict: {len(test)} test reviews through xfer_nlp.predict "
             "with the run's reading, model loading included.", "",
             "| mode | reading | seeds | validation | test | train s | predict s |", "|---|---|---|---|---|---|---|"]
    for mode in modes:
        for setting in settings:
            cells = [r for r in rows if r["mode"] == mode and r["setting"] == setting]
            if not cells:
                lines.append(f"| {mode} | {setting} | 0 | not run | | | |")
                continue
            lines.append(f"| {mode} | {setting} | {len(cells)} | {_mean_sd([r['validation'] for r in cells])} | "
                         f"{_mean_sd([r['test'] for r in cells])} | {statistics.mean(r['train_s'] for r in cells):.0f} | "
                         f"{statistics.mean(r['predict_s'] for r in cells):.1f} |")
    if args.out and rows:
        plot(rows, modes, settings, Path(args.out).with_suffix(".png"))
        lines += ["", f"![test accuracy against training time]({Path(args.out).with_suffix('.png').name})"]
    return "\n".join(lines)


def plot(rows: list[dict], modes: list[str], settings: list[str], path: Path) -> None:
    """Test accuracy (mean ± sd over seeds) against mean training seconds, one point per mode and reading."""
    from xfer_nlp.evaluation import plain_log_ticks, pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, mode in enumerate(modes):
        points = [(s, [r for r in rows if r["mode"] == mode and r["setting"] == s]) for s in settings]
        points = [(s, cells) for s, cells in points if cells]
        if not points:
            continue
        x = [statistics.mean(r["train_s"] for r in cells) for _, cells in points]
        y = [statistics.mean(r["test"] for r in cells) for _, cells in points]
        sd = [statistics.stdev(r["test"] for r in cells) if len(cells) > 1 else 0.0 for _, cells in points]
        ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, linestyle="none", color=plt.cm.tab10(i), label=mode)
        for (setting, cells), xi, yi in zip(points, x, y):
            ax.annotate(f"{setting} ({len(cells)})", (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set(xscale="log", xlabel="training seconds, mean over seeds (log scale)",
           ylabel="test accuracy (mean ± sd; seeds in brackets)",
           title="polarity2k: how a long review is read, accuracy against training time")
    ax.margins(x=0.25, y=0.1)  # room for the labels beside the outermost points
    plain_log_ticks(ax.xaxis)  # the seconds span one or two decades
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else "")


def memory(args) -> str:
    out = Path(args.output_dir)
    reviews = [json.loads(line)["text"] for line in (data_root(RunConfig()) / "polarity2k" / "train.jsonl").read_text(
        encoding="utf-8").splitlines()]
    words = " ".join(reviews).split()
    cli = [str(Path(sys.executable).parent / "xfer-nlp")]
    # --tiny: 128-token windows and 2 steps, so the smoke test exercises every path in a fraction of the time
    sizes, texts_per_split, window, steps = ((1_000,), 2, 128, 2) if args.tiny else ((1_000, 10_000), 8, 512, 4)
    lines = [f"# Peak memory of a 10,000-word text: {cpu_name()}", "",
             f"    {args.command}",
             "", f"Training and validation sets of texts of the length given, read as {window}-token windows "
             "(--long_text chunk); peak RSS of the whole process in MB.", "",
             f"| words per text | probe run | finetune run ({steps} steps) | predict (the validation texts) |",
             "|---|---|---|---|"]
    for n in sizes:
        data = out / f"data-{n}"
        data.mkdir(parents=True, exist_ok=True)
        rows = [{"text": " ".join(words[(i * n) % (len(words) - n):][:n]), "label": i % 2}
                for i in range(2 * texts_per_split)]
        for split, part in (("train", rows[:texts_per_split]), ("validation", rows[texts_per_split:])):
            (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        common = ["--dataset_name", str(data), "--long_text", "chunk", "--max_seq_length", str(window),
                  "--overwrite_output_dir", "--per_device_eval_batch_size", "16"]
        probe_dir, finetune_dir = out / f"probe-{n}", out / f"finetune-{n}"
        probe = run_measured([*cli, "run", "--mode", "probe", "--output_dir", str(probe_dir), "--probe_c_grid", "1",
                              "--feature_cache_dir", str(out / "features"), *common])
        finetune = run_measured([*cli, "run", "--mode", "finetune", "--output_dir", str(finetune_dir), "--max_steps",
                                 str(steps), "--per_device_train_batch_size", "8", *common])
        texts = out / f"texts-{n}.txt"
        texts.write_text("".join(r["text"] + "\n" for r in rows[texts_per_split:]), encoding="utf-8")
        predicted = run_measured([*cli, "predict", "--model", str(finetune_dir), "--input", str(texts),
                                  "--output", str(out / f"predictions-{n}.jsonl")])
        lines.append(f"| {n:,} | {probe.peak_mb:.0f} | {finetune.peak_mb:.0f} | {predicted.peak_mb:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="probe,finetune",
                        help="comma list of modes, each run with every setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"from {', '.join(SETTINGS)}")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma list of training seeds")
    parser.add_argument("--output_dir", default="runs/long-polarity2k",
                        help="a compare folder for the cells (finished cells are kept and skipped)")
    parser.add_argument("--keep_freed_memory", action="store_true", help="train the cells with --keep_freed_memory "
                        "(2-2.5x faster 512-token steps here, results unchanged, but memory grows over a run: "
                        "twice the default's within 50 steps, see the run flag's help)")
    parser.add_argument("--report_only", action="store_true", help="train nothing: tabulate the finished cells of "
                        "these modes and settings, whatever seeds each has (a grid filled over several sessions)")
    parser.add_argument("--memory", action="store_true", help="the peak-memory table instead of the grid")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 64 training reviews, 2 steps, C=1 (with "
                        "--memory: texts of 1,000 words, 2 a split, 128-token windows, 2 steps)")
    args = parser.parse_args(argv)
    # the command as given, for the report's header
    args.command = shlex.join(["python", "benchmarks/long_texts.py", *(sys.argv[1:] if argv is None else argv)])
    publish(memory(args) if args.memory else grid(args), args.out)


if __name__ == "__main__":
    main()
