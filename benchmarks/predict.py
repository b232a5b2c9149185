"""Inference: `xfer_nlp.predict` against `transformers.pipeline()` on the same export and texts, in one run.

    python benchmarks/predict.py --out benchmarks/results/predict.md
    python benchmarks/predict.py --model runs/sst2-finetune --repeats 3

Without --model it first fits a probe of the embedded encoder on sst2 (the export every mode shares in shape).
Texts: sst2 validation (872 sentences) and polarity2k test (200 full-length reviews). Both tools read the same
tokens (pipeline with truncation=True, max_length = the run's max_seq_length, which is what predict applies for
a head-truncating run); pipeline() batches --batch_size texts, predict its default token budget (batches of
BATCH_TOKENS padded tokens, sorted by length); each timing is the median of --repeats after one warm-up call.
predict runs twice: fp32, whose labels must be identical to pipeline()'s, and bf16 autocast (`precision="bf16"`),
whose agreeing labels are counted. Then the export is written as ONNX (`xfer-nlp export --format onnx`) and predict
runs a third time on onnxruntime (`backend="onnx"`), its labels checked equal to torch fp32 predict's. Last, one
sentence at a time: predict() (which loads the model on every call), a Predictor and pipeline() (each built once).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import machine, publish

import xfer_nlp
from xfer_nlp.api import BATCH_TOKENS
from xfer_nlp.data import data_root
from xfer_nlp.config import RunConfig


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def timed(fn, repeats: int):
    fn()  # warm-up: first-call allocations, lazy imports
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def main(argv=None) -> None:
    import onnxruntime
    from transformers import pipeline

    from xfer_nlp.onnx_export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported run folder (default: fit a probe on sst2 first)")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="pipeline()'s batch size (xfer_nlp.predict batches by its own token budget)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each contestant; the median is reported")
    parser.add_argument("--limit", type=int, default=None, help="at most this many texts per set (smoke tests)")
    parser.add_argument("--out", default=None,
                        help="markdown file for the table (default: print only)")
    args = parser.parse_args(argv)
    root = data_root(RunConfig())
    model = args.model
    if model is None:
        model = "runs/bench-predict-probe"
        if not (Path(model) / "results.json").is_file():
            xfer_nlp.run(mode="probe", dataset_name="sst2", output_dir=model, overwrite_output_dir=True,
                         max_train_samples=args.limit)
    max_length = json.loads((Path(model) / "results.json").read_text())["config"]["max_seq_length"]
    reference = pipeline("text-classification", model=model, top_k=None, device=0 if torch.cuda.is_available() else -1)
    export_onnx(model)  # model/onnx/model.onnx, checked against torch
    rows, onnx = [], []
    for name, path in (("sst2 validation", root / "sst2" / "validation.jsonl"),
                       ("polarity2k test (long reviews)", root / "polarity2k" / "test.jsonl")):
        texts = texts_of(path)[:args.limit]
        theirs_s, theirs = timed(lambda: reference(texts, batch_size=args.batch_size, truncation=True,
                                                   max_length=max_length), args.repeats)
        for precision in ("fp32", "bf16"):
            ours_s, ours = timed(lambda: xfer_nlp.predict(model, texts, precision=precision), args.repeats)
            same = sum(o["label"] == max(t, key=lambda s: s["score"])["label"] for o, t in zip(ours, theirs))
            diff = max(abs(o["scores"][s["label"]] - s["score"]) for o, t in zip(ours, theirs) for s in t)
            rows.append(f"| {name} | {len(texts)} | {precision} | {len(texts) / ours_s:.1f} | "
                        f"{len(texts) / theirs_s:.1f} | {theirs_s / ours_s:.2f}x | {same} of {len(texts)} | "
                        f"{diff:.1e} |")
            # fp32 computes what pipeline() computes; bf16 rounds, so a near-tie may flip and is counted, not hidden.
            assert precision != "fp32" or same == len(texts), f"fp32 labels differ from pipeline()'s on {name}"
            if precision == "fp32":
                torch_s, torch_rows = ours_s, ours
        onnx_s, onnx_rows = timed(lambda: xfer_nlp.predict(model, texts, backend="onnx"),
                                  args.repeats)
        same = sum(o["label"] == t["label"] for o, t in zip(onnx_rows, torch_rows))
        assert same == len(texts), f"ONNX labels differ from torch's on {name}"
        diff = max(abs(o["score"] - t["score"]) for o, t in zip(onnx_rows, torch_rows))
        onnx.append(f"| {name} | {len(texts)} | {len(texts) / onnx_s:.1f} | {len(texts) / torch_s:.1f} | "
                    f"{torch_s / onnx_s:.2f}x | {len(texts) / theirs_s:.1f} | {theirs_s / onnx_s:.2f}x | "
                    f"{same} of {len(texts)} | {diff:.1e} |")
    # One text at a time, as a notebook or a server asks: predict() loads the model on every call, a Predictor
    # and a pipeline() are built once; the median of 20 calls after a warm-up each.
    one = texts_of(root / "sst2" / "validation.jsonl")[0]
    predictor = xfer_nlp.Predictor(model)
    latency = {name: timed(fn, 20)[0] * 1000 for name, fn in (
        ("xfer_nlp.predict(MODEL, text)", lambda: xfer_nlp.predict(model, one)),
        ("xfer_nlp.Predictor(MODEL) built once, then called", lambda: predictor(one)),
        ("pipeline() built once, then called", lambda: reference(one, truncation=True, max_length=max_length)))}
    publish("\n".join([
        f"Predict vs pipeline() on {machine()}; export {model} (max_seq_length {max_length}); pipeline's batch "
        f"{args.batch_size}, predict's batches of {BATCH_TOKENS} padded tokens (its default); median of "
        f"{args.repeats}.", "",
        "| texts | n | predict precision | predict texts/s | pipeline texts/s (fp32) | ratio | labels equal to "
        "pipeline's | max score diff |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"ONNX (onnxruntime {onnxruntime.__version__}, fp32, all threads) against torch fp32 predict, same texts, reading "
        "and batches:", "",
        "| texts | n | onnx texts/s | torch fp32 texts/s | onnx / torch | pipeline texts/s | onnx / pipeline | "
        "labels equal to torch's | max score diff |",
        "|---|---|---|---|---|---|---|---|---|", *onnx, "",
        "One sentence at a time (fp32), median of 20 calls:", "", "| call | ms a text |", "|---|---|",
        *(f"| {name} | {ms:.1f} |" for name, ms in latency.items())]), args.out)


if __name__ == "__main__":
    main()
