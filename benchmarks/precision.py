"""Which precision trains fastest here? fp32 against bf16 / fp16 autocast, by encoder size and sequence length.

    python benchmarks/precision.py                                  # all sizes, lengths 32 and 128, batch 32
    python benchmarks/precision.py --sizes minilm --seq_lens 32 --steps 20 --out results/precision.md
    python benchmarks/precision.py --torch_compile no,cudagraphs      # also the step in CUDA graphs (GPU)

Times xfer_nlp's training step (Accelerator(mixed_precision=...), accelerator.backward, fused AdamW, zero_grad)
on randomly initialised BERT encoders of the three common sizes, with random token ids of a fixed length, after
warm-up steps. It answers what `--mixed_precision auto` should pick on this machine: autocast moves the matrix
products to faster bf16/fp16 units and halves the bytes they read, but adds cast kernels, which cost more than
they save when a step is too small to keep the device busy (a small encoder on a large GPU). With
--torch_compile, each precision is also timed with the step compiled as `--torch_compile` compiles it
(`xfer_nlp.loop.compiled_step_model`: one CUDA graph for the fixed shape, replayed every step).
"""

import argparse
import sys
import time
from datetime import datetime, timezone

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from common import machine, publish
from transformers import BertConfig, BertForSequenceClassification

from xfer_nlp.loop import compiled_step_model

SIZES = {  # name: (layers, hidden, heads, intermediate)
    "minilm": (6, 384, 12, 1536),  # the embedded encoder's shape (22.7M parameters)
    "base": (12, 768, 12, 3072),  # bert-base (110M)
    "large": (24, 1024, 16, 4096),  # bert-large (335M)
}


def step_ms(size: str, seq_len: int, precision: str, compiled: str, batch: int, steps: int, warmup: int) -> float:
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=precision)
    layers, hidden, heads, inter = SIZES[size]
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=layers, hidden_size=hidden,
                                                     num_attention_heads=heads, intermediate_size=inter,
                                                     num_labels=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    forward = compiled_step_model(model, compiled)
    ids = torch.randint(1000, 30000, (batch, seq_len), device=accelerator.device)
    labels = torch.randint(0, 2, (batch,), device=accelerator.device)
    cuda = accelerator.device.type == "cuda"
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = forward(input_ids=ids, labels=labels).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="minilm,base,large", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--seq_lens", default="32,128", help="comma list of token lengths (sst2's median is ~25)")
    parser.add_argument("--precisions", default="no,bf16,fp16", help="comma list of no, bf16, fp16")
    parser.add_argument("--torch_compile", default="no", help="comma list of no, cudagraphs, reduce-overhead: "
                        "each precision is timed with each (CUDA graphs need a GPU)")
    parser.add_argument("--batch", type=int, default=32,
                        help="examples per timed step")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--out", default=None, help="markdown file for the table (default: print only)")
    args = parser.parse_args()
    cells = [(p, c) for c in args.torch_compile.split(",") for p in args.precisions.split(",")]
    names = [p if c == "no" else f"{p}+{c}" for p, c in cells]
    lines = [f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine()}; batch {args.batch}, "
             f"mean time per step over {args.steps} steps after {args.warmup} warm-up steps.",
             f"Command: `python benchmarks/precision.py {' '.join(sys.argv[1:])}`", "",
             "| encoder | tokens | " + " | ".join(f"{n} ms/step" for n in names) + " | fastest |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for size in args.sizes.split(","):
        for seq_len in map(int, args.seq_lens.split(",")):
            ms = {n: step_ms(size, seq_len, p, c, args.batch, args.steps, args.warmup) for n, (p, c) in zip(names, cells)}
            lines.append(f"| {size} | {seq_len} | " + " | ".join(f"{ms[n]:.1f}" for n in names)
                         + f" | {min(ms, key=ms.get)} |")
            print(lines[-1], flush=True)
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
