"""Run the sentiment recipe in every mode on the full data, one after the other, and tabulate the results.

    python benchmarks/modes.py --dataset_name sst2 --out benchmarks/results/modes-sst2.md

Each mode runs in a fresh `accelerate launch` process with the recipe's own defaults, so the table is what a
user gets from `accelerate launch recipes/sentiment.py --mode <mode>`. Wall time includes start-up and
model loading; train seconds are the training (probe: encoding + head fit) alone.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ["probe", "finetune", "lora", "scratch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", default="sst2",
                        help="a shared data set's name or a data folder")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma list of modes to time")
    parser.add_argument("--runs_dir", default=str(ROOT / "runs" / "bench-modes"),
                        help="folder for the runs' outputs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "modes-sst2.md"),
                        help="markdown file for the table")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to every run, after -- "
                                                                 "(e.g. -- --max_train_samples 64)")
    args = parser.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    accelerate = Path(sys.executable).parent / "accelerate"
    # `accelerate launch` gives its process one thread unless told; each run gets the threads torch takes here.
    threads = str(torch.get_num_threads())
    rows = []
    for mode in args.modes.split(","):
        out = Path(args.runs_dir) / f"{args.dataset_name}-{mode}"
        cmd = [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--num_cpu_threads_per_process",
               threads, "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "sentiment.py"),
               "--mode", mode, "--dataset_name", args.dataset_name, "--output_dir", str(out), "--overwrite_output_dir",
               "--no_feature_cache", *args.extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
        r = json.loads((out / "results.json").read_text())
        rows.append((mode, r, wall))
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.processor() or platform.machine()}, "
             f"{rows[0][1]['hardware']}, torch {rows[0][1]['torch']}, fp32, one process.",
             f"Command: `python benchmarks/modes.py --dataset_name {args.dataset_name}"
             f"{' ' + ' '.join(args.extra) if args.extra else ''}`", "",
             "| mode | validation accuracy | macro-F1 | train seconds | wall seconds | trainable / total params "
             "| peak RSS MB | epochs (best) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, r, wall in rows:
        m = r["metrics"]["validation"]
        epochs = "—" if mode == "probe" else f"{r['config']['num_train_epochs']:g} ({r['best_epoch']})"
        lines.append(f"| {mode} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {r['train_seconds']:.0f} | {wall:.0f} | "
                     f"{r['trainable_params']:,} / {r['total_params']:,} | {r['peak_memory_mb']:.0f} | {epochs} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
