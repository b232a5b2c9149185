"""`xfer-nlp export --format onnx`: a graph that onnxruntime runs to the torch model's labels, found by predict."""

import json
import subprocess
import sys

import pytest
from conftest import launch_env, make_rows, tiny_configs, save_tiny_encoder

import xfer_nlp
from xfer_nlp.errors import ConfigError
from xfer_nlp.onnx_export import export_onnx

pytest.importorskip("onnxruntime")

TEXTS = [row["text"] for row in make_rows(70, 9)] + ["good " * 200, "awful", ""]


def test_onnx_labels_equal_torch_and_the_run_records_the_export(tiny_run):
    out = xfer_nlp.run(mode="finetune", num_train_epochs=3, learning_rate=1e-3, **tiny_run).output_dir
    path = export_onnx(out)
    assert path == out / "onnx" / "model.onnx"
    record = json.loads((out / "results.json").read_text())
    assert record["onnx"]["file"] == "onnx/model.onnx" and record["onnx"]["max_logit_diff"] < 1e-4
    assert "onnx/model.onnx" in record["files"]  # push uploads it
    torch_rows = xfer_nlp.predict(out, TEXTS, batch_size=16)
    onnx_rows = xfer_nlp.predict(out, TEXTS, batch_size=16, backend="onnx")
    assert [r["text"] for r in onnx_rows] == TEXTS  # input order
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(onnx_rows, torch_rows)) < 1e-4
    assert len({round(r["score"], 6) for r in torch_rows}) > 10  # the scores vary by text: the comparison can fail
    (out / "model.safetensors").rename(out / "moved.safetensors")  # the ONNX path reads no torch weights
    assert xfer_nlp.predict(out, TEXTS, batch_size=16, backend="onnx") == onnx_rows


def test_onnx_windows_of_a_chunked_run_and_another_family(tiny_run, tmp_path):
    """A run that reads long texts as windows: the ONNX path averages them exactly as torch does. RoBERTa: no
    token_type_ids, so the graph takes only what the tokenizer makes. Contrastive's mean-pooled head scales each
    vector to unit length inside the graph too."""
    model = save_tiny_encoder(tiny_configs()["roberta"], tmp_path / "roberta")
    run = dict(tiny_run, model_name_or_path=str(model), max_seq_length=16, long_text="chunk", chunk_stride=8,
               pooling="mean")
    out = xfer_nlp.run(mode="contrastive", pair_iterations=1, probe_c_grid="1", **run).output_dir
    export_onnx(out)
    torch_rows = xfer_nlp.predict(out, TEXTS)
    onnx_rows = xfer_nlp.predict(out, TEXTS, backend="onnx")
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(onnx_rows, torch_rows)) < 1e-4
    assert len({r["label"] for r in torch_rows}) == 2  # both labels occur
    xfer_nlp.run(mode="probe", probe_c_grid="1", overwrite_output_dir=True, **run)  # a new model in the folder
    assert not (out / "onnx").exists()  # the old model's graph is gone, not served beside the new model


def test_the_cli_exports_and_predicts_with_onnx_and_names_each_mistake(tiny_run, tmp_path):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    cli = [sys.executable, "-m", "xfer_nlp.cli"]

    def call(*args):
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=launch_env(), timeout=300)

    missing = call("predict", "--model", str(out), "--backend", "onnx", "good film")
    assert missing.returncode == 2 and "xfer-nlp export" in missing.stderr and "Traceback" not in missing.stderr
    wrong = call("export", str(out), "--format", "onnx", "--output", str(tmp_path / "model.bin"))
    assert wrong.returncode == 2 and "must end in .onnx" in wrong.stderr
    done = call("export", str(out), "--format", "onnx")
    assert done.returncode == 0, done.stderr
    # torch's exporter's notes about nothing (torchvision not installed, shared axes, its own deprecation) not shown
    assert not any(note in done.stderr for note in ("torchvision", "Warning")), done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out / "onnx" / "model.onnx")
    labelled = call("predict", "--model", str(out), "--backend", "onnx", "good film", "awful plot")
    assert labelled.returncode == 0, labelled.stderr
    expected = [r["label"] for r in xfer_nlp.predict(out, ["good film", "awful plot"])]
    assert [line.split("\t")[0] for line in labelled.stdout.strip().splitlines()] == expected
    (tmp_path / "texts.txt").write_text("good film\nawful plot\n")
    from_file = call("predict", "--model", str(out), "--backend", "onnx", "--input", str(tmp_path / "texts.txt"))
    assert [line.split("\t")[0] for line in from_file.stdout.strip().splitlines()] == expected
    assert "LD_PRELOAD" not in from_file.stderr  # the tcmalloc note is torch's: onnxruntime keeps its own arena
    bf16 = call("predict", "--model", str(out), "--backend", "onnx", "--precision", "bf16", "good film")
    assert bf16.returncode == 2 and "fp32" in bf16.stderr
    (out / "onnx" / "model.onnx").write_bytes(b"not a protobuf")
    broken = call("predict", "--model", str(out), "--backend", "onnx", "good film")
    assert broken.returncode == 2 and "not a loadable ONNX model" in broken.stderr


@pytest.mark.parametrize("family", ["distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet", "modernbert",
                                    "xlm-roberta", "ernie", "mobilebert", "data2vec-text", "convbert", "rembert",
                                    "megatron-bert", "xlm-roberta-xl", "nomic_bert", "gte", "eurobert"])  # BERT and RoBERTa above
def test_every_family_s_stock_classifier_exports_to_onnx_with_torch_s_labels(family, tiny_run, tmp_path):
    """Each family's own attention (DeBERTa's relative positions, ModernBERT's local windows, ALBERT's shared
    layers) goes through torch's exporter into a graph that onnxruntime runs to torch's labels."""
    model = save_tiny_encoder(tiny_configs()[family], tmp_path / family)
    out = xfer_nlp.run(mode="finetune", max_steps=20, learning_rate=1e-3,
                       **dict(tiny_run, model_name_or_path=str(model))).output_dir
    export_onnx(out)
    torch_rows, onnx_rows = xfer_nlp.predict(out, TEXTS), xfer_nlp.predict(out, TEXTS, backend="onnx")
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(onnx_rows, torch_rows)) < 1e-4
    assert len({round(r["score"], 6) for r in torch_rows}) > 10  # the scores vary by text: the comparison can fail


def test_a_model_the_exporter_cannot_trace_is_one_message_and_nothing_is_written(tiny_run, tmp_path):
    """Longformer's windowed attention has data-dependent shapes that torch.export cannot trace: the export ended
    in torch's own GuardOnDataDependentSymNode traceback."""
    model = save_tiny_encoder(tiny_configs()["longformer"], tmp_path / "longformer")
    out = xfer_nlp.run(mode="finetune", max_steps=2, **dict(tiny_run, model_name_or_path=str(model))).output_dir
    with pytest.raises(ConfigError, match=r"torch's ONNX exporter could not trace '.*' "
                                          r"\(LongformerForSequenceClassification\): \w+: .*Nothing was written\."):
        export_onnx(out)
    assert not (out / "onnx").exists() or not any((out / "onnx").iterdir())
    record = json.loads((out / "results.json").read_text())
    assert record.get("onnx") is None and not any("onnx" in f for f in record.get("files") or [])
    assert xfer_nlp.predict(out, ["good film"])[0]["label"] in ("0", "1")
