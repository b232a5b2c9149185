"""Speed levers one at a time: milliseconds per fine-tuning step of the embedded encoder.

    python benchmarks/levers.py                      # foreach, fused, bf16, compile
    python benchmarks/levers.py --variants fused,bf16
    python benchmarks/levers.py --profile            # where a fused fp32 and a bf16 step spend their time

Each variant runs in this process on the same random batches (32 x 26 tokens, about sst2's mean length):
3 warm-up steps (for compile: its compile time), then the mean of 20 steps of forward, backward, AdamW step.
  foreach  AdamW(foreach=True), fp32
  fused    AdamW(fused=True), fp32          (what loop.py uses)
  bf16     fused + CPU bf16 autocast         (what --mixed_precision auto picks on AVX512-BF16/AMX CPUs)
  compile  torch.compile(dynamic=True) + foreach, fp32
"""

import argparse
import contextlib
import time

import torch

import xfer_nlp  # noqa: F401  registers the mean-pooling head
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.modes import build


# Self CPU time of torch.profiler's aten ops, grouped by what they do in a fine-tuning step.
KINDS = {"aten::mm": "matrix multiplies", "aten::addmm": "matrix multiplies", "aten::bmm": "matrix multiplies",
         "aten::bernoulli_": "dropout masks (bernoulli_)", "aten::fill_": "zero-fills (fill_)",
         "aten::copy_": "copies and bf16 casts (copy_)", "aten::_fused_adamw_": "AdamW (fused)"}


def measure(variant: str, steps: int = 20, profile: bool = False) -> tuple[float, float]:
    model = build(resolve(RunConfig(mode="finetune")), ("0", "1")).model.train()
    torch.manual_seed(0)
    batches = [dict(input_ids=torch.randint(1000, 20000, (32, 26)), attention_mask=torch.ones(32, 26, dtype=torch.long),
                    labels=torch.randint(0, 2, (32,))) for _ in range(4)]
    fused = variant in ("fused", "bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=fused, foreach=None if fused else True)
    forward = torch.compile(model, dynamic=True) if variant == "compile" else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "bf16" else contextlib.nullcontext

    def step(batch):
        with autocast():
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

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
        kinds = {}
        for event in prof.key_averages():
            kind = KINDS.get(event.key, "everything else")
            kinds[kind] = kinds.get(kind, 0) + event.self_cpu_time_total
        total = sum(kinds.values())
        print(f"{variant}: {ms:.0f} ms a step unprofiled; share of the profiled self CPU time:")
        for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:32s} {100 * us / total:5.1f}%")
    return warm, ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="foreach,fused,bf16,compile")
    parser.add_argument("--profile", action="store_true",
                        help="profile 5 more steps of each variant and print the time by kind of operation")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for variant in args.variants.split(","):
        warm, ms = measure(variant, profile=args.profile)
        print(f"{variant:8s} warm-up {warm:5.1f} s, {ms:4.0f} ms a step", flush=True)


if __name__ == "__main__":
    main()
