"""Scale of data: what 10k, 100k and 1M training examples cost before and during training.

    python benchmarks/scale.py --sizes 10000,100000,1000000 --out benchmarks/results/scale.md
    python benchmarks/scale.py --sizes "" --probe_sizes "" --predict_sizes 10000,100000,1000000

The training sets are real sst2 training sentences repeated to size in a seeded shuffled order (the text is real,
the count is not: no new information past 6,920 examples); validation is sst2's own. Each size runs in a fresh
process, so its peak RSS (VmHWM) is its own:

- tokenisation: `batches.tokenize` (datasets.map, batched, the fast tokenizer) on the whole training split, in
  texts/s, beside the single-process loop a user would write (`tokenizer(text)` per example; timed on the first
  20,000 texts) and `datasets.map` with num_proc=2;
- a finetune run of --steps optimizer steps (recipe defaults otherwise): seconds from calling `xfer_nlp.run` to the
  first optimizer step (reading, cleaning, tokenising, building batches, loading the model), and samples/s over
  the steps after the first;
- peak RSS of the process, and its growth over the smallest size.

The tokenisation columns also give the ceiling: the Rust tokenizer alone (`encode_batch`, its own threads on every
core, no Python objects per text) on the loop's sample. No batched path can pass it, so it says how much of a gap
to the loop batching can close on this machine.

--predict_sizes runs `xfer-nlp predict --input F --output O --precision P` (--predict_precision, fp32 by default)
on that many texts, each size in its own process, and reports texts/s and the process's peak RSS: predict streams
its input and output in chunks, so the memory should not grow with the file. --predict_model is the exported model
it labels with: by default a tiny randomly initialised BERT (2 layers, 32 wide) with the embedded encoder's
tokenizer, built here, because the claim is about the data's memory and a million texts through the real encoder
take about an hour on 2 cores (fp32; about half that in bf16 on a CPU with AMX); pass the probe's output folder
(e.g. runs/scale/probe-10000) to measure the real encoder.

--probe_sizes also runs the probe on those sizes and reports its feature cache on disk (bytes per example). A
1M-example probe encodes a million sentences (about an hour on this project's 2-core CPU in fp32, the probe's
precision under auto; --probe_precision bf16 halves it on a CPU with AMX), so by default it runs on the smallest
size only; the bytes per example do not depend on the size (they do on the precision the features come out in).
"""

import argparse
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import machine, publish, run_measured

HERE = Path(__file__).resolve().parent


def make_data(root: Path, size: int, source: Path) -> Path:
    folder = root / f"sst2x{size}"
    if (folder / "train.jsonl").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    lines = (source / "train.jsonl").read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(size) % len(lines)
    tmp = folder / "train.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for i in order:
            f.write(lines[i] + "\n")
    tmp.rename(folder / "train.jsonl")
    (folder / "validation.jsonl").write_text((source / "validation.jsonl").read_text(encoding="utf-8"))
    return folder


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def cell(args) -> dict:
    """One size in this (fresh) process: tokenisation, then a run; prints a JSON line."""
    import xfer_nlp
    from xfer_nlp import batches
    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.data import load_text_data
    from xfer_nlp.modes import EMBEDDED_MODEL, resolve_model_path

    from transformers import AutoTokenizer

    out = {"size": int(args.cell_size), "mode": args.mode}
    if args.mode == "finetune":
        cfg = resolve(RunConfig(dataset_name=args.cell_data))
        data = load_text_data(cfg)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
        texts = data.splits["train"]["text"][:]
        sample = texts[:20000]
        start = time.perf_counter()
        for text in sample:
            tokenizer(text, truncation=True, max_length=cfg.max_seq_length)
        out["loop_texts_per_s"] = len(sample) / (time.perf_counter() - start)
        rust = copy.deepcopy(tokenizer.backend_tokenizer)  # the embedded tokenizer.json pads to 128: not here
        rust.no_padding()
        rust.enable_truncation(cfg.max_seq_length)
        start = time.perf_counter()
        for i in range(0, len(sample), 1000):
            rust.encode_batch(sample[i:i + 1000])
        out["rust_texts_per_s"] = len(sample) / (time.perf_counter() - start)
        for num_proc in (None, 2):
            start = time.perf_counter()
            batches.tokenize(data.splits, tokenizer, batches.Reading(cfg.max_seq_length), num_proc=num_proc)
            seconds = time.perf_counter() - start
            out[f"map_texts_per_s_{num_proc or 1}"] = sum(len(s) for s in data.splits.values()) / seconds
        del data, texts, sample
        out["rss_after_tokenising_mb"] = peak_rss_mb()
    steps = []

    def on_step(step):
        steps.append(time.perf_counter())

    overrides = {"max_steps": args.steps} if args.mode == "finetune" else {"mixed_precision": args.probe_precision}
    shutil.rmtree(Path(args.cell_out) / "features", ignore_errors=True)  # a cold cache: encoding is what is measured
    start = time.perf_counter()
    result = xfer_nlp.run(mode=args.mode, dataset_name=args.cell_data, output_dir=args.cell_out,
                          overwrite_output_dir=True, on_step=on_step if args.mode == "finetune" else None,
                          feature_cache_dir=str(Path(args.cell_out) / "features"), **overrides)
    if args.mode == "finetune":
        out["first_step_s"] = steps[0] - start
        batch = result.record.config["per_device_train_batch_size"]
        out["samples_per_s"] = batch * (len(steps) - 1) / (steps[-1] - steps[0])
    else:
        files = list((Path(args.cell_out) / "features").rglob("*.safetensors"))
        rows = sum(result.record.split_sizes.values())
        out["cache_bytes"] = sum(p.stat().st_size for p in files)
        out["cache_bytes_per_example"] = out["cache_bytes"] / rows
        out["encode_s"] = result.record.probe["encode_seconds"]
        out["texts_per_s"] = rows / result.record.probe["encode_seconds"]
    out["val_accuracy"] = result.metrics["validation"]["accuracy"]
    out["peak_rss_mb"] = peak_rss_mb()
    print("CELL " + json.dumps(out))
    return out


def tiny_export(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT classifier with the embedded encoder's tokenizer, saved as a model folder."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from xfer_nlp.modes import EMBEDDED_MODEL, resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def predict_cell(model: Path, data: Path, size: int, work: Path, precision: str) -> dict:
    """`xfer-nlp predict` on a file of `size` texts in a child process: texts/s and the child's own peak RSS."""
    output = work / f"predict-{size}.jsonl"
    cmd = [str(Path(sys.executable).parent / "xfer-nlp"), "predict", "--model", str(model), "--input",
           str(data / "train.jsonl"), "--output", str(output), "--precision", precision]
    seconds, peak_mb, *_ = run_measured(cmd)
    with output.open(encoding="utf-8") as f:
        rows = sum(1 for _ in f)
    if rows != size:
        sys.exit(f"predict on {size} texts wrote {rows} rows")
    output.unlink()
    return {"size": size, "texts_per_s": size / seconds, "seconds": seconds, "peak_rss_mb": peak_mb}


def main(argv=None) -> None:
    from xfer_nlp.api import PREDICT_PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma list of training-set sizes for the finetune rows")
    parser.add_argument("--probe_sizes", default="10000",
                        help="comma list of sizes for the probe's feature-cache rows")
    parser.add_argument("--probe_precision", default="auto", choices=("auto", "no", "bf16"),
                        help="the probe's --mixed_precision for --probe_sizes (auto: fp32 for the probe; bf16 encodes "
                        "about 2x faster on CPUs with AMX or AVX512-BF16)")
    parser.add_argument("--predict_sizes", default="", help="texts to label with `xfer-nlp predict` (e.g. "
                        "10000,100000,1000000); none by default")
    parser.add_argument("--predict_model", default=None, help="exported model for --predict_sizes (default: a tiny "
                        "random BERT with the embedded tokenizer, built in --work_dir)")
    parser.add_argument("--predict_precision", default="fp32", choices=PREDICT_PRECISIONS,
                        help="xfer-nlp predict's --precision for --predict_sizes (bf16 measured about 2x fp32 on CPUs "
                        "with AMX or AVX512-BF16)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each finetune run")
    parser.add_argument("--work_dir", default="runs/scale",
                        help="folder for the repeated data sets and the runs")
    parser.add_argument("--data_dir", default=None, help="sst2 JSONL folder (default: the shared data's sst2)")
    parser.add_argument("--out", default=None,
                        help="markdown file for the table (default: print only)")
    for name in ("cell_size", "cell_data", "cell_out", "mode"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)])
    if args.cell_data:
        cell(args)
        return
    from xfer_nlp.config import RunConfig
    from xfer_nlp.data import data_root

    source = Path(args.data_dir) if args.data_dir else data_root(RunConfig()) / "sst2"
    work = Path(args.work_dir)
    cells = []
    jobs = [("finetune", int(n)) for n in args.sizes.split(",") if n] + \
           [("probe", int(n)) for n in args.probe_sizes.split(",") if n]
    for mode, size in jobs:
        data = make_data(work / "data", size, source)
        cmd = [sys.executable, str(HERE / "scale.py"), "--cell_size", str(size), "--cell_data", str(data),
               "--cell_out", str(work / f"{mode}-{size}"), "--mode", mode, "--steps", str(args.steps),
               "--probe_precision", args.probe_precision]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
        if done.returncode != 0:
            sys.exit(f"{mode} at {size} failed:\n{done.stderr[-3000:]}")
        cells.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("CELL "))[5:]))
    sizes = [int(n) for n in args.predict_sizes.split(",") if n]
    if sizes:
        model = Path(args.predict_model) if args.predict_model else tiny_export(work / "tiny-bert")
        cells += [{"mode": "predict", "model": str(model), **predict_cell(model, make_data(work / "data", n, source),
                                                                         n, work, args.predict_precision)}
                  for n in sizes]
    publish(report(cells, args), args.out)


def report(cells: list[dict], args) -> str:
    tuned = [c for c in cells if c["mode"] == "finetune"]
    base = tuned[0]["peak_rss_mb"] if tuned else None
    lines = [f"Scale of data on {machine()}: sst2 sentences repeated to size (seeded shuffle), finetune for "
             f"{args.steps} steps (recipe defaults otherwise), each size in a fresh process.", "",
             "    " + args.command, ""]
    if tuned:
        lines += ["| training examples | tokenise texts/s (map) | map num_proc=2 | per-example loop | map / loop | "
                  "Rust tokenizer alone, all cores (ceiling) | ceiling / loop | seconds to first step | samples/s | "
                  "peak RSS MB | vs smallest |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in tuned:
        lines.append(f"| {c['size']:,} | {c['map_texts_per_s_1']:,.0f} | {c['map_texts_per_s_2']:,.0f} | "
                     f"{c['loop_texts_per_s']:,.0f} | {c['map_texts_per_s_1'] / c['loop_texts_per_s']:.1f}x | "
                     f"{c['rust_texts_per_s']:,.0f} | {c['rust_texts_per_s'] / c['loop_texts_per_s']:.1f}x | "
                     f"{c['first_step_s']:.1f} | {c['samples_per_s']:.1f} | {c['peak_rss_mb']:,.0f} | "
                     f"{(c['peak_rss_mb'] / base - 1) * 100:+.1f}% |")
    probes = [c for c in cells if c["mode"] == "probe"]
    if probes:
        lines += ["", f"The probe with --mixed_precision {args.probe_precision} (auto is fp32 for the probe):", "",
                  "| probe: training examples | encode s | texts/s | feature cache on disk | bytes per example | "
                  "peak RSS MB |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['size']:,} | {c['encode_s']:.1f} | {c['texts_per_s']:.0f} | {c['cache_bytes'] / 2**20:.1f} MiB "
                  f"| {c['cache_bytes_per_example']:.0f} | {c['peak_rss_mb']:,.0f} |" for c in probes]
    predicts = [c for c in cells if c["mode"] == "predict"]
    if predicts:
        lines += ["", f"`xfer-nlp predict --input F --output O --precision {args.predict_precision}` with "
                  f"{predicts[0]['model']}, each size in its own process:", "",
                  "| predict: texts | seconds | texts/s | peak RSS MB | vs smallest |", "|---|---|---|---|---|"]
        lines += [f"| {c['size']:,} | {c['seconds']:.1f} | {c['texts_per_s']:,.0f} | {c['peak_rss_mb']:,.0f} | "
                  f"{(c['peak_rss_mb'] / predicts[0]['peak_rss_mb'] - 1) * 100:+.1f}% |" for c in predicts]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
