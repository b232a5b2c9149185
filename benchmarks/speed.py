"""xfer_nlp against transformers' Trainer, side by side in one invocation: time to accuracy (the headline), throughput, memory.

    python benchmarks/speed.py --short          # 100 steps: 1 epoch on 3,200 examples, every contestant
    python benchmarks/speed.py --contestants trainer-grouped,trainer-grouped@bf16,xfer_nlp,xfer_nlp@bf16
                                                # full: 3 epochs on sst2 train (6,920 sentences)
    python benchmarks/speed.py --task scratch --num_train_epochs 5 --learning_rate 1e-4 ...
    python benchmarks/speed.py --repeats 3 ...  # the line-up 3 times round-robin; median run, RSS range
    python benchmarks/speed.py --heap ...       # + glibc's heap at the RSS peak (in use / free but held)
                                                # and the most ever in use

Every contestant runs in its own subprocess (so peak RSS is its own), one after the other, on the same model
(the embedded encoder with xfer_nlp's mean-pooling head, built by `xfer_nlp.modes.build` from the same seed),
data, seed, batch size (32), learning rate, warm-up (10%), weight decay (0.01) and epochs, evaluating on sst2
validation after every epoch. Peers:
  trainer-pad128   run_glue.py's defaults: every batch padded to 128 tokens;
  trainer-dynamic  dynamic padding (DataCollatorWithPadding);
  trainer-grouped  dynamic padding + train_sampling_strategy="group_by_length";
  xfer_nlp         `xfer_nlp.run(mode=...)`, the recipe's code path.
  xfer_nlp+cudagraphs, xfer_nlp+reduce-overhead
                   the same with `torch_compile=...`: the training step in CUDA graphs (GPU only).
NAME@bf16 runs that contestant under bf16 autocast (Trainer: bf16=True; xfer_nlp: mixed_precision="bf16");
without a suffix, --mixed_precision (default no: fp32) applies.
Samples/s counts training samples over the training call's wall time (for both: per-epoch evaluation included).
The probe's peer (a frozen-encoder Trainer) is in benchmarks/probe.py.
"""

import argparse
import ctypes
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import numpy as np
import torch
from common import machine, publish

PEERS = ("trainer-pad128", "trainer-dynamic", "trainer-grouped")


def _splits(args):
    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.data import load_text_data

    return load_text_data(resolve(RunConfig(dataset_name=args.dataset_name, mode=args.task, seed=args.seed,
                                            max_train_samples=args.max_train_samples))).splits


def run_trainer(args, name: str, workdir: str, precision: str) -> dict:
    from transformers import (DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments,
                              default_data_collator)

    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.metrics import classification_metrics
    from xfer_nlp.modes import build

    splits = _splits(args)
    cfg = resolve(RunConfig(mode=args.task, seed=args.seed))
    built = build(cfg, tuple(str(i) for i in range(2)))
    tok = built.tokenizer
    pad = {"padding": "max_length"} if name == "trainer-pad128" else {}
    data = splits.map(lambda b: tok(b["text"], truncation=True, max_length=128, **pad), batched=True,
                      remove_columns=["text"])
    evals = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_evaluate(self, _args, state, _control, metrics=None, **k):
            evals.append({"epoch": round(state.epoch), "seconds": time.perf_counter() - self.start,
                          "accuracy": metrics["eval_accuracy"]})

    targs = TrainingArguments(
        output_dir=workdir, num_train_epochs=args.num_train_epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=32, per_device_eval_batch_size=128, warmup_steps=0.1, weight_decay=0.01,  # a float < 1 is a ratio in transformers 5
        seed=args.seed, eval_strategy="epoch", save_strategy="no", logging_steps=50, report_to=[],
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if name == "trainer-grouped" else "random")
    trainer = Trainer(
        model=built.model, args=targs, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=default_data_collator if pad else DataCollatorWithPadding(tok),
        compute_metrics=lambda p: classification_metrics(np.argmax(p.predictions, -1), p.label_ids, 2),
        callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": len(data["train"]) * args.num_train_epochs, "evals": evals}


def run_xfer(args, workdir: str, precision: str, compiled: str) -> dict:
    import xfer_nlp

    r = xfer_nlp.run(mode=args.task, dataset_name=args.dataset_name, seed=args.seed, output_dir=workdir,
                     learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
                     max_train_samples=args.max_train_samples, mixed_precision=precision,
                     torch_compile=compiled or "no", overwrite_output_dir=True,
                     logging_steps=50)  # as the Trainer's: each log reads the loss back from the device
    evals = [{"epoch": h["epoch"], "seconds": h["seconds"], "accuracy": h["validation_accuracy"]}
             for h in r.results["history"]]
    return {"seconds": r.train_seconds, "samples": r.results["train_samples"] * args.num_train_epochs,
            "evals": evals}


class HeapWatch(threading.Thread):
    """Samples RSS every 10 ms and, at each new high, glibc's heap statistics (mallinfo2; Linux with glibc 2.33+).

    At the peak they split the process's memory into heap bytes in use, heap bytes free but still held (freed
    chunks glibc keeps: fragmentation), and large blocks glibc mapped on their own; the rest of RSS is code and
    libraries. Every 50 ms it also reads the bytes in use (heap + mapped blocks), for their high-water mark over
    the run: what the program itself held at most, whatever the allocator made of it.
    """

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

    def __init__(self):
        super().__init__(daemon=True)
        self.mallinfo2 = ctypes.CDLL(None).mallinfo2
        self.mallinfo2.restype = self._Info
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak, self.at_peak, self.max_in_use = 0, {}, 0

    def run(self):
        with open("/proc/self/statm") as statm:
            for tick in itertools.count():
                statm.seek(0)
                rss = int(statm.read().split()[1]) * self.page
                new_high = rss > self.peak + 2**20
                if new_high or tick % 5 == 0:  # mallinfo2 walks the free lists: not at every tick
                    info = self.mallinfo2()
                    self.max_in_use = max(self.max_in_use, (info.uordblks + info.hblkhd) / 2**20)
                if new_high:
                    self.peak = rss
                    self.at_peak = {"heap_in_use_mb": info.uordblks / 2**20, "heap_free_mb": info.fordblks / 2**20,
                                    "mmapped_mb": info.hblkhd / 2**20}
                time.sleep(0.01)


def one(args) -> None:
    """Child process: run one contestant, print its JSON on the last line."""
    name, _, precision = args.one.partition("@")
    precision = precision or args.mixed_precision
    watch = HeapWatch() if args.heap else None
    if watch:
        watch.start()
    with tempfile.TemporaryDirectory() as work:
        tool, _, compiled = name.partition("+")
        out = run_xfer(args, work, precision, compiled) if tool == "xfer_nlp" else run_trainer(args, name, work, precision)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():  # both tools train on the GPU when there is one: its memory is the one that binds
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if watch:
        out["heap_at_peak"] = {**watch.at_peak, "max_in_use_mb": watch.max_in_use}
    print(json.dumps(out))


def _rss(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" + (f" ({values[0]:.0f}-{values[-1]:.0f})" if len(values) > 1 else "")


def time_to(evals: list[dict], target: float) -> float | None:
    return next((e["seconds"] for e in evals if e["accuracy"] >= target - 1e-9), None)


def headline(results: dict, best_peer: str | None, target: float | None, task: str) -> list[str]:
    """The first table of the report: seconds until validation accuracy first reaches the fp32 Trainer's final
    accuracy, xfer_nlp as shipped (what --mixed_precision auto picks here) against the Trainer as shipped (fp32),
    then at each equal precision both ran."""
    from xfer_nlp.modes import EMBEDDED_MODEL
    from xfer_nlp.precision import resolve_precision

    if best_peer is None:
        return []
    shipped = "xfer_nlp@bf16" if resolve_precision("auto", task, EMBEDDED_MODEL) == "bf16" else "xfer_nlp"
    pairs = [("as shipped", shipped, best_peer), ("fp32", "xfer_nlp", best_peer),
             ("bf16", "xfer_nlp@bf16", f"{best_peer}@bf16")]
    lines = [f"Time to accuracy: seconds until validation accuracy first reaches {best_peer}'s final accuracy in fp32 "
             f"({target:.4f}); each run evaluates once per epoch.", "",
             "| comparison | xfer_nlp s | Trainer s | speed-up |", "|---|---|---|---|"]
    for label, ours, theirs in pairs:
        if ours not in results or theirs not in results:
            continue
        a, b = time_to(results[ours]["evals"], target), time_to(results[theirs]["evals"], target)
        ratio = f"{b / a:.2f}x" if a and b else "—"
        lines.append(f"| {label} ({ours} vs {theirs}) | {'never' if a is None else f'{a:.0f}'} | "
                     f"{'never' if b is None else f'{b:.0f}'} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("finetune", "scratch"), default="finetune",
                        help="fine-tune the embedded encoder or train its architecture from random weights")
    parser.add_argument("--dataset_name", default="sst2",
                        help="a shared data set's name")
    parser.add_argument("--num_train_epochs", type=float, default=3.0,
                        help="epochs of every contestant")
    parser.add_argument("--learning_rate", type=float, default=2e-5,
                        help="peak learning rate of every contestant")
    parser.add_argument("--max_train_samples", type=int, default=None,
                        help="train on this many examples (default: the whole split)")
    parser.add_argument("--seed", type=int, default=42,
                        help="the seed of every contestant")
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default="no",
                        help="precision of every contestant (NAME@bf16 in --contestants overrides one)")
    parser.add_argument("--short", action="store_true", help="100 steps (1 epoch on 3,200 examples) instead of the "
                                                             "full run")
    parser.add_argument("--contestants", default=",".join((*PEERS, "xfer_nlp")),
                        help="comma list of trainer-pad128, trainer-dynamic, trainer-grouped, xfer_nlp; NAME@bf16 "
                             "runs one in bf16, xfer_nlp+cudagraphs / xfer_nlp+reduce-overhead with the training "
                             "step compiled into CUDA graphs (GPU only)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole line-up this many times, round-robin, and report each contestant's median "
                             "run, with the range of peak RSS (this machine's RSS varies by ~100 MB between runs)")
    parser.add_argument("--heap", action="store_true",
                        help="also report glibc's heap at each contestant's RSS peak: bytes in use, free but held "
                             "(fragmentation), mapped on their own; and the most bytes ever in use over the run "
                             "(Linux, glibc 2.33+)")
    parser.add_argument("--out", default=None, help="markdown file for the table (default: print only)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.short:
        args.num_train_epochs, args.max_train_samples = 1.0, args.max_train_samples or 3200
    if args.one:
        return one(args)

    runs = {name: [] for name in args.contestants.split(",")}
    for _ in range(args.repeats):
        for name in runs:
            argv = ["--task", args.task, "--dataset_name", args.dataset_name, "--num_train_epochs",
                    str(args.num_train_epochs), "--learning_rate", str(args.learning_rate), "--seed", str(args.seed),
                    "--mixed_precision", args.mixed_precision, "--one", name] + (["--heap"] if args.heap else [])
            if args.max_train_samples:
                argv += ["--max_train_samples", str(args.max_train_samples)]
            child = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
            r = json.loads(child.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            print(f"{name}: {r['samples'] / r['seconds']:.1f} samples/s, {r['seconds']:.0f} s, "
                  f"accuracy {r['evals'][-1]['accuracy']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    # Each contestant's median run by training time (its time-to-accuracy comes from that run); RSS is
    # reported as the median with its range, since it does not follow the training time.
    results = {name: sorted(rs, key=lambda r: r["seconds"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
    rss = {name: sorted(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()}

    # The peer to beat: the fastest Trainer configuration at the baseline precision.
    peers = [p for p in PEERS if p in results]
    best_peer = max(peers, key=lambda p: results[p]["samples"] / results[p]["seconds"]) if peers else None
    target = results[best_peer]["evals"][-1]["accuracy"] if best_peer else None
    gpu = torch.cuda.is_available()
    lines = [f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine()}; {args.task} on {args.dataset_name}, {args.num_train_epochs:g} epochs, "
             f"lr {args.learning_rate:g}, batch 32, precision {args.mixed_precision}, seed {args.seed}"
             + (f"; median of {args.repeats} round-robin repeats." if args.repeats > 1 else "."),
             f"Command: `python benchmarks/speed.py {' '.join(a for a in sys.argv[1:])}`", "",
             *headline(results, best_peer, target, args.task), "",
             "| contestant | train samples/s | wall s | time to peer's final accuracy (s) | final val accuracy "
             "| peak RSS MB |" + (" peak GPU MB |" if gpu else "") + " xfer_nlp speed-up (same precision) |",
             "|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|"]
    for name, r in results.items():
        rate = r["samples"] / r["seconds"]
        reach = time_to(r["evals"], target) if target is not None else None
        # each xfer_nlp contestant against the peers at its own precision
        mine = results.get("xfer_nlp" + name[len(name.partition("@")[0]):])
        ratio = f"{(mine['samples'] / mine['seconds']) / rate:.2f} x" if mine and not name.startswith("xfer") else "—"
        lines.append(f"| {name} | {rate:.1f} | {r['seconds']:.0f} | {'—' if reach is None else f'{reach:.0f}'} | "
                     f"{r['evals'][-1]['accuracy']:.4f} | {_rss(rss[name])} |"
                     + (f" {r['peak_gpu_mb']:.0f} |" if gpu else "") + f" {ratio} |")
    if best_peer:
        lines.append(f"\nThe peer's final accuracy is {best_peer}'s ({target:.4f}), the fastest Trainer configuration "
                     "at the baseline precision; '—' means never reached.")
    if "xfer_nlp@bf16" in results and best_peer:
        a, b = results["xfer_nlp@bf16"], results[best_peer]
        lines.append(f"xfer_nlp@bf16 (the recipe's default on CPUs with native bf16) against {best_peer} in fp32: "
                     f"{(a['samples'] / a['seconds']) / (b['samples'] / b['seconds']):.2f} x the throughput.")
    for name, r in results.items():  # the compiled contestants against the fastest Trainer at their precision
        if name.startswith("xfer_nlp+") and best_peer:
            suffix = name[len(name.partition("@")[0]):]  # "@bf16" or ""
            peer = results.get(best_peer + suffix)
            if peer:
                lines.append(f"{name} against {best_peer + suffix}: "
                             f"{(r['samples'] / r['seconds']) / (peer['samples'] / peer['seconds']):.2f} x the "
                             "throughput (its seconds include compiling).")
    if args.heap:
        lines += ["", "glibc's heap at each contestant's RSS peak (its median run):", "",
                  "| contestant | peak RSS MB | heap in use MB | heap free but held MB | mapped blocks MB "
                  "| most ever in use (heap + mapped) MB |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['peak_rss_mb']:.0f} | {r['heap_at_peak']['heap_in_use_mb']:.0f} | "
                  f"{r['heap_at_peak']['heap_free_mb']:.0f} | {r['heap_at_peak']['mmapped_mb']:.0f} | "
                  f"{r['heap_at_peak']['max_in_use_mb']:.0f} |" for name, r in results.items()]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
