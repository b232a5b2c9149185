"""A few runs with the real embedded encoder (MiniLM-L6) on real sst2 data from ../shared/data."""

import json

import pytest
from conftest import SHARED_DATA

import xfer_nlp

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(),
                                 reason="needs ../shared/data/sst2 or XFER_NLP_DATA_DIR")]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-probe")
    return xfer_nlp.run(mode="probe", dataset_name="sst2", max_train_samples=2000, output_dir=str(tmp / "out"),
                        feature_cache_dir=str(tmp / "features"))


def test_probe_on_real_subset_beats_chance_clearly(probe_run):
    assert probe_run.results["pooling"] == "mean"  # what the embedded encoder's pooling config declares
    assert probe_run.results["train_samples"] == 2000
    assert probe_run.metrics["validation"]["accuracy"] >= 0.75  # full 872-sentence validation split; chance is 0.51


def test_pipeline_reproduces_probe_predictions_on_real_data(probe_run):
    """The exported model, loaded by transformers.pipeline, predicts exactly what the fast path scored."""
    from transformers import pipeline

    rows = [json.loads(line) for line in (SHARED_DATA / "sst2" / "validation.jsonl").read_text().splitlines()]
    classifier = pipeline("text-classification", model=str(probe_run.output_dir), device=-1)
    predicted = [p["label"] for p in classifier([r["text"] for r in rows], batch_size=64)]
    names = probe_run.results["label_names"]
    accuracy = sum(p == names[r["label"]] for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(probe_run.metrics["validation"]["accuracy"], abs=1e-9)


def test_finetune_short_run_learns(tmp_path):
    # 16 steps: mean pooling, the encoder's own, learns this fast; the stock head (finetune's default) needs the
    # small-data rule's 250 steps (benchmarks/RESULTS.md, "Pooling": 0.514 here, 0.728 at n=100 with 250 steps).
    result = xfer_nlp.run(mode="finetune", dataset_name="sst2", max_train_samples=512, num_train_epochs=1,
                          learning_rate=1e-4, pooling="mean", output_dir=str(tmp_path / "out"), seed=0)
    assert result.metrics["validation"]["accuracy"] >= 0.7
