"""Which malloc a 512-token fine-tune on a CPU should run under, and what --gradient_checkpointing saves there:
glibc's defaults, glibc with --keep_freed_memory, jemalloc and tcmalloc (both preloaded through LD_PRELOAD), and
glibc and tcmalloc with activation checkpointing, each in a fresh process, one after another.

    python benchmarks/allocators.py --out benchmarks/results/allocators.md

Every setting runs the same short polarity2k fine-tune (head+tail, 512 tokens, batch 32, --max_steps 4, then one
evaluation of the 400 validation and test reviews) as a child process. The table gives its wall seconds, the run's
own train_seconds (results.json), the child's user and kernel CPU seconds and its peak RSS (wait4's rusage of that
child alone; GB of 10^9 bytes, as RESULTS.md's other memory figures), and whether its weights equal the first
row's byte for byte (neither an allocator nor recomputing activations may change the arithmetic). An allocator
that is not installed is a row saying how to install it. Four steps do not show memory growth over a run:
RESULTS.md ("Memory allocators") has a whole fine-tune's.
"""

import argparse
import ctypes.util
import hashlib
import json
import shlex
import sys
import tempfile
from pathlib import Path

from common import cpu_name, publish, run_measured

# name: (the library ctypes looks up, Debian/Ubuntu package)
PRELOADS = {"jemalloc": ("jemalloc", "libjemalloc2"), "tcmalloc": ("tcmalloc_minimal", "libtcmalloc-minimal4")}
SETTINGS = ("glibc", "glibc --keep_freed_memory", "jemalloc", "tcmalloc", "glibc --gradient_checkpointing",
            "tcmalloc --gradient_checkpointing")


def launch(setting: str) -> tuple[list[str], dict] | str:
    """(extra run flags, extra environment) for a setting ("MALLOC [FLAGS]"), or why it cannot run here."""
    malloc, *flags = setting.split()
    if malloc == "glibc":
        return flags, {}
    library, package = PRELOADS[malloc]
    found = ctypes.util.find_library(library)  # e.g. 'libtcmalloc_minimal.so.4', which LD_PRELOAD finds by name
    return (flags, {"LD_PRELOAD": found}) if found else f"not installed (apt-get install {package})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list from: {', '.join(SETTINGS)}")
    parser.add_argument("--max_steps", type=int, default=4, help="training steps of each run")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    parser.add_argument("--dataset_name", default="polarity2k", help="the data to fine-tune on")
    parser.add_argument("--model_name_or_path", default=None, help="the encoder (default: the embedded one)")
    parser.add_argument("--max_seq_length", type=int, default=512, help="tokens read of each text (head+tail)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/allocators.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# Memory allocators and activation checkpointing: fine-tuning on {args.dataset_name} at "
             f"{args.max_seq_length} tokens, {cpu_name()}", "", f"    {command}", "",
             f"{args.max_steps} steps of 32 texts, then one evaluation of the validation and test splits; each row a "
             "fresh process, run one after another.", "",
             "| malloc, flags | wall s | train s | user s | kernel s | peak RSS GB | weights as the first row's |",
             "|---|---|---|---|---|---|---|"]
    reference = None
    with tempfile.TemporaryDirectory() as work:
        for setting in args.settings.split(","):
            how = launch(setting)
            if isinstance(how, str):
                lines.append(f"| {setting} | {how} | | | | | |")
                continue
            flags, env = how
            out = Path(work) / setting.replace(" ", "")
            model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
            cmd = [str(Path(sys.executable).parent / "xfer-nlp"), "run", "--mode", "finetune", "--dataset_name",
                   args.dataset_name, *model, "--truncation", "head+tail", "--max_seq_length", str(args.max_seq_length),
                   "--max_steps", str(args.max_steps), "--eval_steps", str(args.max_steps), "--output_dir", str(out),
                   *flags]
            measured = run_measured(cmd, env)
            weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
            reference = reference or weights
            train_s = json.loads((out / "results.json").read_text())["train_seconds"]
            lines.append(f"| {setting} | {measured.seconds:.1f} | {train_s:.1f} | {measured.user_s:.0f} | "
                         f"{measured.system_s:.0f} | {measured.peak_mb * 2**20 / 1e9:.1f} | "
                         f"{'yes' if weights == reference else 'NO'} |")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
