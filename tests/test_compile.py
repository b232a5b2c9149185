"""--torch_compile: a training step compiled into CUDA graphs over a few padded batch shapes.

CUDA graphs need a GPU; here the same wiring runs with torch.compile's CPU-safe `aot_eager` backend in place of
`cudagraphs` (the real backends were measured on an H200: benchmarks/RESULTS.md, "CUDA graphs").
"""

import contextlib

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoTokenizer

import xfer_nlp
from xfer_nlp import batches, loop
from xfer_nlp.errors import ConfigError

from conftest import data_folder, make_rows


def test_bucket_lengths_are_few_and_cover_every_length():
    buckets = {batches.bucket_length(n, 512) for n in range(1, 513)}
    assert sorted(buckets) == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    for n in range(1, 513):
        padded = batches.bucket_length(n, 512)
        assert n <= padded and padded % 8 == 0 and (n <= 16 or padded <= 1.5 * n)
    assert batches.bucket_length(100, 128) == 128 and batches.bucket_length(120, 100) == 100  # capped


def test_bucket_collator_pads_to_the_bucket(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    collate = batches.BucketCollator(tokenizer, 64)
    rows = [{"input_ids": [2] + [5] * n + [3], "attention_mask": [1] * (n + 2), "labels": 0, "doc": i}
            for i, n in enumerate((3, 17))]
    batch = collate(rows)
    assert batch["input_ids"].shape == (2, 24)  # longest 19 -> 24
    assert batch["attention_mask"].sum(1).tolist() == [5, 19]
    assert collate(rows[:1])["input_ids"].shape == (1, 16)


def test_compiled_run_trains_in_bucketed_shapes_and_exports_clean(tiny_run, tmp_path_factory, monkeypatch):
    from transformers import pipeline

    # Texts of 3 to 30 words: batches of several padded lengths.
    rows = {split: [{**r, "text": " ".join([r["text"]] * (1 + i % 4))} for i, r in enumerate(make_rows(n, seed))]
            for split, n, seed in (("train", 160, 1), ("validation", 48, 2))}
    data_dir = data_folder(tmp_path_factory, "varied", **rows)

    monkeypatch.setitem(loop.COMPILE, "reduce-overhead", {**loop.COMPILE["reduce-overhead"], "backend": "aot_eager",
                                                           "mode": None})
    monkeypatch.setattr(loop, "check_compile", lambda how, device: None)
    # As on a GPU, where compiling happens: the CPU's own step levers (a sparse embedding gradient) are off there.
    monkeypatch.setattr(loop, "cpu_speed_levers", lambda accelerator, model: contextlib.nullcontext())
    shapes = []
    real = loop.compiled_step_model

    def watched(model, how):
        compiled = real(model, how)
        assert compiled is not model

        def step(**inputs):
            shapes.append(tuple(inputs["input_ids"].shape))
            return compiled(**inputs)
        return step

    monkeypatch.setattr(loop, "compiled_step_model", watched)
    torch._dynamo.reset()
    counters.clear()
    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, torch_compile="reduce-overhead",
                          **{**tiny_run, "dataset_name": str(data_dir)})
    assert shapes and {length for _, length in shapes} <= {16, 24, 32}  # max_seq_length 32: three buckets at most
    assert len(set(shapes)) > 1 and counters["stats"]["unique_graphs"] == 1  # every shape from one compilation
    assert len(shapes) == result.results["history"][-1]["step"]  # every training step went through the compiled model
    # The export is the plain model: no compile wrapper in its weights' names, and pipeline() scores what the run did.
    from safetensors import safe_open
    with safe_open(str(result.output_dir / "model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
    rows = rows["validation"]
    classifier = pipeline("text-classification", model=str(result.output_dir), device=-1)
    predicted = [int(p["label"]) for p in classifier([r["text"] for r in rows], batch_size=8)]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(result.metrics["validation"]["accuracy"], abs=1e-9)


def test_torch_compile_needs_a_gpu_and_a_stepped_classifier(tiny_run):
    with pytest.raises(ConfigError, match="CUDA GPU"):
        xfer_nlp.run(mode="finetune", torch_compile="cudagraphs", **tiny_run)
    with pytest.raises(ConfigError, match="does not apply to probe"):
        xfer_nlp.run(mode="probe", torch_compile="cudagraphs", **tiny_run)
    with pytest.raises(ConfigError, match="not one of no, cudagraphs, reduce-overhead"):
        xfer_nlp.run(mode="finetune", torch_compile="max-autotune", **tiny_run)
