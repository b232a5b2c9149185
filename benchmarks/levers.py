"""Speed levers one at a time: milliseconds per fine-tuning step of the embedded encoder.

    python benchmarks/levers.py                      # foreach, fused, bf16, compile
    python benchmarks/levers.py --variants fused,masks,bf16,bf16-masks   # the dropout masks' lever
    python benchmarks/levers.py --variants fused,bf16
    python benchmarks/levers.py --profile            # where a fused fp32 and a bf16 step spend their time
    python benchmarks/levers.py --in_run bf16        # the same for 10 steps inside a real run (xfer_nlp.run)
    python benchmarks/levers.py --gemm               # GFLOP/s of the step's linear layers, fp32 and bf16

Each variant runs in this process on the same random batches (32 x 26 tokens, about sst2's mean length):
3 warm-up steps (for compile: its compile time), then the mean of 20 steps of forward, backward, AdamW step.
  foreach  AdamW(foreach=True), fp32
  fused    AdamW(fused=True), fp32          (what loop.py uses)
  bf16     fused + CPU bf16 autocast         (what --mixed_precision auto picks on AVX512-BF16/AMX CPUs)
  masks, bf16-masks   fused / bf16 with xfer_nlp.dropout's 16-bit dropout masks (what loop.py uses on CPUs)
  compile  torch.compile(dynamic=True) + foreach, fp32
--in_run profiles steps 301-310 of a real 2-epoch fine-tune on sst2 instead: real batch lengths, and
the heap as a real run leaves it, which decides what fresh allocations cost (page faults); it also counts the
process's minor page faults over those steps.
"""

import argparse
import contextlib
import resource
import tempfile
import time

import torch
from common import machine

import xfer_nlp
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.dropout import cpu_dropout
from xfer_nlp.modes import build


# Self CPU time of torch.profiler's aten ops, grouped by what they do in a fine-tuning step.
KINDS = {"aten::mm": "matrix multiplies", "aten::addmm": "matrix multiplies", "aten::bmm": "matrix multiplies",
         "aten::bernoulli_": "dropout masks", "aten::random_": "dropout masks", "aten::fill_": "zero-fills (fill_)",
         "aten::copy_": "copies and bf16 casts (copy_)", "aten::_fused_adamw_": "AdamW (fused)"}


def measure(variant: str, steps: int = 20, profile: bool = False) -> tuple[float, float]:
    model = build(resolve(RunConfig(mode="finetune")), ("0", "1")).model.train()
    torch.manual_seed(0)
    batches = [dict(input_ids=torch.randint(1000, 20000, (32, 26)), attention_mask=torch.ones(32, 26, dtype=torch.long),
                    labels=torch.randint(0, 2, (32,))) for _ in range(4)]
    fused = variant in ("fused", "bf16", "masks", "bf16-masks")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=fused, foreach=None if fused else True)
    forward = torch.compile(model, dynamic=True) if variant == "compile" else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant.startswith("bf16") \
        else contextlib.nullcontext

    def step(batch):
        with autocast():
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    with cpu_dropout(model) if variant.endswith("masks") else contextlib.nullcontext():
        start = time.perf_counter()
        for i in range(3):
            step(batches[i % 4])
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % 4])
        ms = (time.perf_counter() - start) / steps * 1000
        if profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for i in range(5):
                    step(batches[i % 4])
            print(f"{variant}: {ms:.0f} ms a step unprofiled; share of the profiled self CPU time:")
            print_kinds(prof)
    return warm, ms


def print_kinds(prof) -> None:
    kinds = {}
    for event in prof.key_averages():
        kind = KINDS.get(event.key, "everything else")
        kinds[kind] = kinds.get(kind, 0) + event.self_cpu_time_total
    total = sum(kinds.values())
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {100 * us / total:5.1f}%")


def profile_in_run(precision: str, first: int = 300, steps: int = 10) -> None:
    """Profile the training steps after optimizer step `first` of a real xfer_nlp.run (full sst2, 2 epochs)."""
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    at = {}

    def on_step(step: int) -> None:  # after each optimizer step: from the end of one to the end of another
        if step == first:
            prof.start()
            at["faults"], at["time"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        if step == first + steps:
            prof.stop()
            at["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - at["faults"]
            at["time"] = time.perf_counter() - at["time"]

    with tempfile.TemporaryDirectory() as out:
        xfer_nlp.run(mode="finetune", dataset_name="sst2", num_train_epochs=2, learning_rate=2e-5,
                     mixed_precision=precision, output_dir=out, on_step=on_step)
    print(f"{precision}, steps {first + 1}-{first + steps} of a real run: {at['time'] / steps * 1000:.0f} ms a step "
          f"profiled, {at['faults'] / steps:.0f} minor page faults a step; share of the self CPU time:")
    print_kinds(prof)


def gemm_rates() -> None:
    """What the CPU's matrix units give on the shapes of a 32 x 26-token step: the ceiling for any tool."""
    for dtype in (torch.float32, torch.bfloat16):
        rates = []
        for m, k, n in ((832, 384, 384), (832, 384, 1536), (832, 1536, 384)):
            a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            for _ in range(10):
                torch.nn.functional.linear(a, w)
            start = time.perf_counter()
            for _ in range(200):
                torch.nn.functional.linear(a, w)
            rates.append(f"{m}x{k}x{n} {2 * m * k * n * 200 / (time.perf_counter() - start) / 1e9:.0f}")
        print(f"{str(dtype):15s} GFLOP/s: {', '.join(rates)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="foreach,fused,bf16,compile",
                        help="comma list of the step variants to time (see the top of this file)")
    parser.add_argument("--profile", action="store_true",
                        help="profile 5 more steps of each variant and print the time by kind of operation")
    parser.add_argument("--in_run", choices=("no", "bf16"),
                        help="instead: profile 10 steps inside a real 2-epoch run at this precision (about 2-4 min)")
    parser.add_argument("--gemm", action="store_true", help="instead: time the step's matrix multiplies alone")
    args = parser.parse_args()
    print(machine())
    if args.gemm:
        return gemm_rates()
    if args.in_run:
        return profile_in_run(args.in_run)
    for variant in args.variants.split(","):
        warm, ms = measure(variant, profile=args.profile)
        print(f"{variant:8s} warm-up {warm:5.1f} s, {ms:4.0f} ms a step", flush=True)


if __name__ == "__main__":
    main()
