"""One run per mode through the public API, asserting which weights moved and what was written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import xfer_nlp
from conftest import one_process_env
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.modes import build

RESULT_KEYS = {"mode", "model", "dataset", "train_samples", "metrics", "train_seconds", "trainable_params",
               "total_params", "peak_memory_mb", "config"}


def encoder_weights(model_dir):
    """The pretrained encoder's tensors, keyed as inside the pooled classifier (encoder.*), which has no pooler."""
    return {f"encoder.{k}": v for k, v in load_file(model_dir / "model.safetensors").items()
            if not k.startswith("pooler")}


def exported(out):
    return load_file(out / "model.safetensors")


def check_outputs(result, mode):
    out = result.output_dir
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= results.keys()
    assert results["mode"] == mode
    assert set(results["metrics"]) == {"validation", "test"}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for split in ("validation", "test"):  # the reported figures are those of the predictions the run wrote
        mine = [r for r in rows if r["split"] == split]
        assert results["metrics"][split]["accuracy"] == sum(r["label"] == r["predicted"] for r in mine) / len(mine)
        f1 = [c["f1"] for c in results["metrics"][split]["per_class"].values()]
        assert results["metrics"][split]["macro_f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-12)
    assert results["config"]["mode"] == mode and results["config"]["hub_token"] is None
    assert 0 < results["trainable_params"] <= results["total_params"]
    for name in ("config.json", "model.safetensors", "README.md", "config_xfer.yaml", "train.log"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}
    return results


def test_probe_freezes_encoder_and_fits_head(tiny_run, tiny_model_dir):
    result = xfer_nlp.run(mode="probe", **tiny_run)
    results = check_outputs(result, "probe")
    before, after = encoder_weights(tiny_model_dir), exported(result.output_dir)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"probe changed encoder weight {name}"
    assert after["classifier.weight"].abs().sum() > 0
    assert results["trainable_params"] == after["classifier.weight"].numel() + after["classifier.bias"].numel()
    assert results["probe"]["C"] in [float(c) for c in RunConfig().probe_c_grid.split(",")]
    # the tiny data is separable by one word: a fitted head on a random encoder must beat chance clearly
    assert results["metrics"]["validation"]["accuracy"] >= 0.7


def test_a_new_mode_is_one_registry_entry(tiny_run, tiny_model_dir, monkeypatch):
    """A mode is one modes.MODES entry: its defaults, its rules, the loop it runs, its card and its report row are
    read from there. Here a sixth mode (the head trained by gradient descent on a frozen encoder) is added with
    nothing but that entry, and runs end to end."""
    from xfer_nlp import modes, report
    from xfer_nlp.errors import ConfigError

    head = modes.Mode("headonly", "frozen encoder, head trained by AdamW", "the encoder was frozen and only the head "
                      "was trained by gradient descent", "pretrained, frozen; head trained by AdamW",
                      {"learning_rate": 3e-2, "num_train_epochs": 5.0, "warmup_ratio": 0.0, "min_train_steps": 0,
                       "per_device_train_batch_size": 16}, why_not="only its head trains",
                      prepare=modes._train_only_the_head)
    monkeypatch.setitem(modes.MODES, "headonly", head)
    resolved = resolve(RunConfig(mode="headonly"))
    assert (resolved.learning_rate, resolved.num_train_epochs) == (3e-2, 5.0)
    with pytest.raises(ConfigError, match="--reinit_layers does not apply to mode headonly: only its head trains"):
        resolve(RunConfig(mode="headonly", reinit_layers=1))
    result = xfer_nlp.run(mode="headonly", **{k: v for k, v in tiny_run.items() if k != "min_train_steps"})
    results = check_outputs(result, "headonly")
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3, 4, 5]  # its own epochs, through the AdamW loop
    before, after = encoder_weights(tiny_model_dir), exported(result.output_dir)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"headonly changed encoder weight {name}"
    assert "the encoder was frozen and only the head was trained by gradient descent" in \
        (result.output_dir / "README.md").read_text()
    assert report._starting_point("headonly", "headonly", {}) == "pretrained, frozen; head trained by AdamW"


def test_probe_feature_cache_is_reused_and_switchable(tiny_run, tmp_path):
    first = xfer_nlp.run(mode="probe", **tiny_run).results["probe"]
    again = xfer_nlp.run(mode="probe", **{**tiny_run, "output_dir": str(tmp_path / "again")}).results
    assert not any(first["feature_cache_hit"].values())
    assert all(again["probe"]["feature_cache_hit"].values())
    # the card's seconds say when they left out the encoding
    cached = "(its features read from the feature cache, so without encoding them)"
    assert cached in (tmp_path / "again" / "README.md").read_text()
    assert cached not in (Path(tiny_run["output_dir"]) / "README.md").read_text()
    # a setting the probe has none of changes nothing, and the log says so
    off = xfer_nlp.run(mode="probe", no_feature_cache=True, num_train_epochs=7,
                       **{**tiny_run, "output_dir": str(tmp_path / "off")})
    assert not any(off.results["probe"]["feature_cache_hit"].values())
    assert off.metrics == again["metrics"]
    assert "Not read by mode probe, so without effect in this run: --num_train_epochs 7." in (
        off.output_dir / "train.log").read_text()


# The next three read the pooled head's export (encoder.* keys), so they name mean pooling: the tiny model declares
# it, as the embedded encoder does, but the trained modes now default to the stock head (tested per family in
# test_families.py and by test_pooling_choice_exports_loadable_model below).
def test_finetune_moves_encoder_weights(tiny_run, tiny_model_dir):
    result = xfer_nlp.run(mode="finetune", learning_rate=1e-3, num_train_epochs=3, pooling="mean", **tiny_run)
    results = check_outputs(result, "finetune")
    before, after = encoder_weights(tiny_model_dir), exported(result.output_dir)
    moved = [n for n, t in before.items() if not torch.equal(after[n], t)]
    assert len(moved) > 0.9 * len(before)
    assert results["trainable_params"] == results["total_params"]
    assert len(results["history"]) == 3
    assert results["metrics"]["validation"]["accuracy"] >= 0.7


def test_head_init_probe_starts_from_a_fitted_head(tiny_run, tmp_path):
    """LP-FT: the classifier a fine-tune starts from is a logistic head fitted on the frozen encoder's (pooler)
    features, so one step at a negligible learning rate scores what that head scored, where a random head does not
    start from the same weights; the run records the head and its card the setting."""
    from xfer_nlp.errors import ConfigError

    # fp32 on every CPU: under bf16 autocast (auto's choice where the CPU has AVX512-BF16 or AMX) the head is fitted
    # on bf16 features while the final scores are fp32, and the tiny random encoder's bf16 features separate worse.
    still = dict(learning_rate=1e-12, max_steps=1, weight_decay=0.0, mixed_precision="no")
    tuned = xfer_nlp.run(mode="finetune", head_init="probe", **still, **tiny_run)
    check_outputs(tuned, "finetune")
    start = tuned.results["head_init"]
    assert start["C"] in RunConfig().c_grid and start["validation"] >= 0.7  # the tiny data is separable by a word
    assert tuned.metrics["validation"]["accuracy"] == start["validation"]
    assert not any(start["feature_cache_hit"].values())  # encoded afresh: its cost is in the run's seconds
    assert "- head_init: probe" in (tuned.output_dir / "README.md").read_text()
    plain = xfer_nlp.run(mode="finetune", **still, **{**tiny_run, "output_dir": str(tmp_path / "random")})
    assert plain.results["head_init"] is None
    assert not torch.equal(exported(plain.output_dir)["classifier.weight"],
                           exported(tuned.output_dir)["classifier.weight"])
    lora = xfer_nlp.run(mode="lora", head_init="probe", max_steps=2, mixed_precision="no",
                        **{**tiny_run, "output_dir": str(tmp_path / "l")})
    assert lora.results["head_init"]["C"] == start["C"]
    for mode, why in (("probe", "its head is the probe's fitted head already"),
                      ("scratch", "a head fitted on random features would guide nothing")):
        with pytest.raises(ConfigError, match=f"--head_init probe does not apply to {mode}: {why}"):
            resolve(RunConfig(mode=mode, head_init="probe"))
    with pytest.raises(ConfigError, match="--head_init 'prob' \\(did you mean 'probe'\\?\\)"):
        resolve(RunConfig(mode="finetune", head_init="prob"))


def test_scratch_starts_from_random_weights(tiny_run, tiny_model_dir):
    cfg = resolve(RunConfig(mode="scratch", pooling="mean", **{k: v for k, v in tiny_run.items()}))
    model = build(cfg, ("0", "1")).model
    pretrained = encoder_weights(tiny_model_dir)
    state = model.state_dict()
    same = [n for n, t in pretrained.items() if t.ndim == 2 and torch.equal(state[n], t)]
    assert same == [], f"scratch kept pretrained weights: {same}"
    result = xfer_nlp.run(mode="scratch", num_train_epochs=2, pooling="mean", **tiny_run)
    check_outputs(result, "scratch")


def test_lora_moves_only_adapters_and_head(tiny_run, tiny_model_dir):
    result = xfer_nlp.run(mode="lora", learning_rate=5e-3, num_train_epochs=2, lora_target_modules="query,value",
                          pooling="mean", **tiny_run)
    results = check_outputs(result, "lora")
    before, after = encoder_weights(tiny_model_dir), exported(result.output_dir)
    assert not any("lora" in name for name in after), "the export must be merged, plain transformers weights"
    for name, tensor in before.items():
        if ".query." in name or ".value." in name:
            if name.endswith("weight"):
                assert not torch.equal(after[name], tensor), f"adapter merged into {name} did not move it"
        else:
            assert torch.equal(after[name], tensor), f"lora changed non-adapted weight {name}"
    # r=8 adapters on query and value of 2 layers (A: 8x32, B: 32x8 each) + the 32x2 head and its bias
    assert results["trainable_params"] == 2 * 2 * (8 * 32 + 32 * 8) + 32 * 2 + 2


@pytest.mark.parametrize("pooling,architecture", [("mean", "XferPooledForSequenceClassification"),
                                                  ("cls", "XferPooledForSequenceClassification"),
                                                  ("pooler", "BertForSequenceClassification")])
def test_pooling_choice_exports_loadable_model(tiny_run, pooling, architecture):
    from transformers import AutoModelForSequenceClassification

    result = xfer_nlp.run(mode="finetune", pooling=pooling, num_train_epochs=1, **tiny_run)
    assert result.results["pooling"] == pooling
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert type(model).__name__ == architecture  # heads stock transformers can express export as the stock class
    assert getattr(model.config, "pooling", "pooler") == pooling


def test_a_run_starts_from_an_earlier_export_with_other_labels(tiny_run, tmp_path):
    """Intermediate-task transfer: a classifier trained on one task (stock head or pooled) is the starting encoder
    for another with a different label set; its head is replaced, its encoder weights are the start."""
    import json as _json

    from conftest import make_rows, write_jsonl
    from xfer_nlp.errors import ConfigError

    three = tmp_path / "three"  # another task: three labels
    for split, n, seed in (("train", 90, 4), ("validation", 30, 5)):
        write_jsonl(three / f"{split}.jsonl", [{**r, "label": i % 3} for i, r in enumerate(make_rows(n, seed))])
    second = {**tiny_run, "dataset_name": str(three)}
    stock = xfer_nlp.run(mode="finetune", max_steps=2, **{**tiny_run, "output_dir": str(tmp_path / "stock")})
    assert stock.results["pooling"] == "pooler"
    again = xfer_nlp.run(mode="finetune", max_steps=2, **{**second, "model_name_or_path": str(stock.output_dir),
                                                         "output_dir": str(tmp_path / "stock-3")})
    assert exported(again.output_dir)["classifier.weight"].shape[0] == 3
    pooled = xfer_nlp.run(mode="finetune", pooling="mean", max_steps=2,
                          **{**tiny_run, "output_dir": str(tmp_path / "pooled")})
    probed = xfer_nlp.run(mode="probe", **{**second, "model_name_or_path": str(pooled.output_dir),
                                           "output_dir": str(tmp_path / "pooled-3")})
    assert probed.results["pooling"] == "mean"  # the export's own pooling
    before, after = exported(pooled.output_dir), exported(probed.output_dir)
    assert after["classifier.weight"].shape[0] == 3
    for name, tensor in before.items():  # the probe froze exactly the earlier run's tuned encoder
        if name.startswith("encoder."):
            assert torch.equal(after[name], tensor), name
    with pytest.raises(ConfigError, match="is an xfer_nlp export with a mean-pooled head, and its encoder has no "
                                          "pooler to build the stock head on"):
        xfer_nlp.run(mode="finetune", pooling="pooler", **{**second, "model_name_or_path": str(pooled.output_dir),
                                                           "output_dir": str(tmp_path / "refused")})
    # A folder whose weights do not fit its config outside the head is refused, not silently re-initialised.
    config = _json.loads((stock.output_dir / "config.json").read_text())
    (stock.output_dir / "config.json").write_text(_json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ConfigError, match="do not fit its own config.json .*intermediate"):
        xfer_nlp.run(mode="finetune", max_steps=2, **{**second, "model_name_or_path": str(stock.output_dir),
                                                      "output_dir": str(tmp_path / "bad")})


def test_head_init_keep_goes_on_from_the_start_classifiers_own_head(tiny_run, tiny_data_dir, tmp_path):
    """Domain adaptation: a classifier with this data's labels trains on from its own head (the stock one, or a
    pooled export's with its pooling and unit-length features), rows matched to the data's labels by name."""
    import json as _json
    import shutil

    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.errors import ConfigError
    from xfer_nlp.modes import build

    def kept(start, mode="finetune", labels=("0", "1"), **kw):
        return build(resolve(RunConfig(mode=mode, model_name_or_path=str(start), head_init="keep", **kw)), labels)

    stock = xfer_nlp.run(mode="finetune", max_steps=3, **{**tiny_run, "output_dir": str(tmp_path / "stock")})
    weights = exported(stock.output_dir)
    model = kept(stock.output_dir).model
    assert torch.equal(model.classifier.weight, weights["classifier.weight"])
    assert torch.equal(model.bert.pooler.dense.weight, weights["bert.pooler.dense.weight"])
    # The same labels listed the other way round, and named in capitals (as many Hub classifiers): rows follow names.
    swapped = tmp_path / "swapped"
    shutil.copytree(stock.output_dir, swapped)
    config = _json.loads((swapped / "config.json").read_text())
    (swapped / "config.json").write_text(_json.dumps({**config, "id2label": {"0": "B", "1": "A"},
                                                      "label2id": {"B": 0, "A": 1}}))
    model = kept(swapped, labels=("a", "b")).model
    assert torch.equal(model.classifier.weight, weights["classifier.weight"].flip(0))
    assert torch.equal(model.classifier.bias, weights["classifier.bias"].flip(0))
    assert model.config.id2label == {0: "a", 1: "b"}
    # lora keeps it too, in the copy that trains
    lora = kept(stock.output_dir, mode="lora").model
    assert torch.equal(lora.base_model.model.classifier.modules_to_save["default"].weight, weights["classifier.weight"])

    contrastive = xfer_nlp.run(mode="contrastive", max_train_samples=16, pair_iterations=1,
                               **{**tiny_run, "output_dir": str(tmp_path / "contrastive")})
    model = kept(contrastive.output_dir).model
    assert model.config.pooling == "mean" and model.config.normalize  # the kept head read unit-length mean vectors
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in exported(contrastive.output_dir).items())
    # trains on from there, and says so
    on = xfer_nlp.run(mode="finetune", head_init="keep", max_steps=2,
                      **{**tiny_run, "model_name_or_path": str(contrastive.output_dir), "output_dir": str(tmp_path / "on")})
    assert on.results["config"]["head_init"] == "keep"
    assert "Head kept from" in (on.output_dir / "train.log").read_text()
    card = (on.output_dir / "README.md").read_text()
    assert f"Head: `{contrastive.output_dir}`'s own, kept for the same labels" in card
    assert "(mean pooling, each sentence vector scaled to unit length)" in card and on.results["normalize"]
    assert on.results["history"][0]["step"] == 0  # the start is scored before the first step ...
    # ... and kept when no step beats it on validation (here steps too small to change a prediction)
    still = xfer_nlp.run(mode="finetune", head_init="keep", max_steps=2, learning_rate=1e-12,
                         **{**tiny_run, "model_name_or_path": str(contrastive.output_dir),
                            "output_dir": str(tmp_path / "still")})
    assert still.results["best_step"] == 0
    assert all(torch.equal(t, exported(still.output_dir)[n]) for n, t in exported(contrastive.output_dir).items())
    assert "Keeping the starting classifier (step 0)" in (still.output_dir / "train.log").read_text()

    with pytest.raises(ConfigError, match="is not a classifier .*BertModel.*no head to keep"):
        kept(tiny_run["model_name_or_path"])
    with pytest.raises(ConfigError, match="scores 0, 1; the data's labels are neg, neu, pos"):
        kept(stock.output_dir, labels=("neg", "neu", "pos"))
    with pytest.raises(ConfigError, match="scores 0, 1; the data's labels are no, yes"):
        kept(stock.output_dir, labels=("no", "yes"))
    with pytest.raises(ConfigError, match="reads the encoder's pooled first token, not mean pooling"):
        kept(stock.output_dir, pooling="mean")
    with pytest.raises(ConfigError, match="reads mean-pooled states, not cls"):
        kept(contrastive.output_dir, pooling="cls")
    with pytest.raises(ConfigError, match="--head_init keep does not apply to probe: its head is fitted afresh"):
        kept(stock.output_dir, mode="probe")
    # a classifier's config over weights without a head: refused, not silently given a random head
    headless = tmp_path / "headless"
    shutil.copytree(tiny_run["model_name_or_path"], headless)
    config = _json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(_json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(ConfigError, match="holds no weights for its head .*classifier"):
        kept(headless)


def test_pipeline_reproduces_probe_predictions(tiny_run, tiny_data_dir):
    from transformers import pipeline

    result = xfer_nlp.run(mode="probe", pooling="mean", **tiny_run)
    rows = [json.loads(line) for line in (tiny_data_dir / "validation.jsonl").read_text().splitlines()]
    classifier = pipeline("text-classification", model=str(result.output_dir), device=-1)
    predicted = [int(p["label"]) for p in classifier([r["text"] for r in rows], batch_size=8)]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(result.metrics["validation"]["accuracy"], abs=1e-9)


def test_result_prints_as_table(tiny_run):
    text = str(xfer_nlp.run(mode="probe", **tiny_run))
    assert "validation" in text and "accuracy" in text and "parameters" in text


@pytest.mark.parametrize("cpuinfo,name,bf16", [
    ("model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512_bf16 amx_bf16 sse\n",
     "Intel(R) Xeon(R) Processor (AMX-BF16, AVX512-BF16)", True),
    ("model name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n", "AMD EPYC (AVX512-BF16)", True),
    ("model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz\nflags\t\t: fpu avx512f\n",
     "Intel(R) Xeon(R) CPU @ 2.80GHz (no native bf16)", False),
    ("", "x86_64 CPU (no native bf16)", False),  # no /proc/cpuinfo
])
def test_the_cpu_is_named_with_its_bf16_units(monkeypatch, cpuinfo, name, bf16):
    """What results.json's hardware says: timings compare only within one kind of CPU."""
    from xfer_nlp import precision

    monkeypatch.setattr(precision, "_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    assert precision.cpu_name() == name
    assert precision.cpu_has_bf16() is bf16


def test_bf16_autocast_run(tiny_run):
    """bf16 autocast on CPU (AMX/AVX512-bf16 where the CPU has it): trains, evaluates and exports fp32 weights."""
    fp32 = xfer_nlp.run(mode="probe", mixed_precision="no", **{**tiny_run, "output_dir": tiny_run["output_dir"] + "32"})
    result = xfer_nlp.run(mode="finetune", mixed_precision="bf16", num_train_epochs=1, **tiny_run)
    assert fp32.results["mixed_precision"] == "no"  # one process, two precisions: each run() sets its own
    assert result.results["mixed_precision"] == "bf16"
    assert result.results["hardware"].startswith(f"1 process(es) on {xfer_nlp.precision.cpu_name()}, ")
    assert "Precision fp32 on" in (Path(fp32.output_dir) / "train.log").read_text()  # the log says which one ran
    assert "Precision bf16 on" in (Path(result.output_dir) / "train.log").read_text()
    weights = exported(result.output_dir)
    assert all(t.dtype == torch.float32 for t in weights.values())
    # the reported metrics were rescored in fp32: exactly what pipeline() computes with the export
    from transformers import pipeline

    rows = [json.loads(line) for line in (Path(tiny_run["dataset_name"]) / "validation.jsonl").read_text().splitlines()]
    classifier = pipeline("text-classification", model=str(result.output_dir), device=-1)
    predicted = [p["label"] for p in classifier([r["text"] for r in rows], batch_size=16)]
    accuracy = sum(p == str(r["label"]) for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(result.metrics["validation"]["accuracy"], abs=1e-9)


def test_tensorboard_tracking(tiny_run):
    """The tracker gets what results.json keeps: each logged loss, learning rate and (fractional) epoch at its step,
    each evaluation's validation scores, and the reported figures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, report_to="tensorboard", **tiny_run)
    logdir = result.output_dir / "xfer_nlp"  # the project's scalars (the run's settings, as hparams, one level down)
    assert list(logdir.glob("events.out.tfevents.*"))
    tracked = EventAccumulator(str(logdir))
    tracked.Reload()

    def series(tag):
        return [(e.step, e.value) for e in tracked.Scalars(tag)]

    record = json.loads((result.output_dir / "results.json").read_text())
    for tag, key in (("train/loss", "loss"), ("train/learning_rate", "learning_rate"), ("train/epoch", "epoch")):
        assert series(tag) == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in record["losses"]], tag
    assert any(0 < r["epoch"] % 1 for r in record["losses"])  # logged within epochs, as the epoch says
    assert series("eval/validation_accuracy") == [(h["step"], pytest.approx(h["validation_accuracy"], rel=1e-6))
                                                  for h in record["history"]]
    last = record["history"][-1]["step"]  # the reported figures (kept weights, fp32; test scored once), at the end
    for split in ("validation", "test"):
        assert series(f"final/{split}_accuracy") == [(last, pytest.approx(record["metrics"][split]["accuracy"]))]
    # an overwriting run is a new tensorboard run: the old one's events went, where its curves had merged with it
    again = xfer_nlp.run(mode="finetune", max_steps=3, report_to="tensorboard", overwrite_output_dir=True, **tiny_run)
    tracked = EventAccumulator(str(logdir))
    tracked.Reload()
    assert [step for step, _ in series("train/loss")] == [r["step"] for r in again.results["losses"]] == [3]


def test_a_resumed_run_s_tensorboard_curves_hold_each_step_once(tiny_run):
    """The killed run wrote events past its last checkpoint, and the resumed run writes those steps again into the
    same folder, which tensorboard reads as one run: its curves held two points at each such step, zig-zagging
    between the two processes' figures. The resumed run's writer hides the killed run's events from its first step
    on (purge_step), so each step is shown once, with the figures results.json keeps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = dict(tiny_run, mode="finetune", num_train_epochs=2, report_to="tensorboard", save_steps=3,
               save_total_limit=None)
    out = xfer_nlp.run(**run).output_dir
    # as if killed at the end of training, before results.json was written, with checkpoint-12 its last
    (out / "results.json").unlink()
    for later in (c for c in (out / "checkpoints").glob("checkpoint-*") if int(c.name.split("-")[1]) > 12):
        shutil.rmtree(later)
    resumed = xfer_nlp.run(**run, resume_from_checkpoint="latest")
    assert resumed.results["resumed"]["from_step"] == 12
    tracked = EventAccumulator(str(out / "xfer_nlp"))
    tracked.Reload()
    assert len(list((out / "xfer_nlp").glob("events.out.tfevents.*"))) == 2  # the killed run's and the resumed one's
    losses = [(e.step, e.value) for e in tracked.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in resumed.results["losses"]]
    assert [s for s, _ in losses] == [5, 10, 15, 20]
    scores = [(e.step, e.value) for e in tracked.Scalars("eval/validation_accuracy")]
    history = resumed.results["history"]
    assert scores == [(h["step"], pytest.approx(h["validation_accuracy"], rel=1e-6)) for h in history]
    assert [s for s, _ in scores] == [10, 20]


def test_trackio_tracking(tiny_model_dir, tiny_data_dir, tmp_path):
    """A real trackio run, kept locally: named after the output folder, with each logged loss and evaluation that
    results.json keeps. In a subprocess, since trackio reads TRACKIO_DIR once, on import."""
    out = tmp_path / "tiny-finetune"
    script = f"""
import json, xfer_nlp
from trackio.sqlite_storage import SQLiteStorage
xfer_nlp.run(mode="finetune", num_train_epochs=2, report_to="trackio", model_name_or_path={str(tiny_model_dir)!r},
             dataset_name={str(tiny_data_dir)!r}, output_dir={str(out)!r}, max_seq_length=32, seed=0,
             logging_steps=5, min_train_steps=0, per_device_train_batch_size=16)
runs = SQLiteStorage.get_runs("xfer_nlp")
print("TRACKED " + json.dumps({{"runs": runs, "logs": SQLiteStorage.get_logs("xfer_nlp", runs[0])}}, default=str))
"""
    env = {**one_process_env(), "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tracked = json.loads(result.stdout.split("TRACKED ", 1)[1].splitlines()[0])  # trackio prints after it
    assert tracked["runs"] == ["tiny-finetune"]
    logged = {(log["step"], key): value for log in tracked["logs"] for key, value in log.items()
              if key.startswith(("train/", "eval/", "final/"))}
    record = json.loads((out / "results.json").read_text())
    expected = {(r["step"], f"train/{k}"): r[k] for r in record["losses"] for k in ("loss", "learning_rate", "epoch")}
    expected |= {(h["step"], "eval/validation_accuracy"): h["validation_accuracy"] for h in record["history"]}
    expected[record["history"][-1]["step"], "final/test_macro_f1"] = record["metrics"]["test"]["macro_f1"]
    assert len(record["history"]) == 2 and len(record["losses"]) >= 4
    assert {k: logged.get(k) for k in expected} == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("accuracies, chosen, warned", [
    ((0.80, 0.79, 0.79), 1e-4, "smallest"),  # still rising at the smallest C (large or repeated data)
    ((0.70, 0.75, 0.80), 1e-2, "largest"),
    ((0.79, 0.79, 0.79), 1e-4, None),  # a tie keeps the smallest C: nothing suggests a smaller one scores more
    ((0.78, 0.80, 0.79), 1e-3, None),  # the best C inside the grid
])
def test_probe_warns_when_the_best_c_is_at_the_edge_of_its_grid(caplog, accuracies, chosen, warned):
    from xfer_nlp.probe import fit_head

    class Scripted:  # validation scores in the order fit_head tries C (smallest first)
        num_labels = 2

        def __init__(self):
            self.scores = iter(accuracies)

        def __call__(self, predictions, labels):
            return {"accuracy": next(self.scores)}

    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2
    with caplog.at_level("WARNING", logger="xfer_nlp.probe"):
        head = fit_head((x, y), (x, y), Scripted(), [1e-2, 1e-4, 1e-3])
    assert head["C"] == chosen
    if warned:
        assert f"is the {warned} in --probe_c_grid" in caplog.text and "Extend --probe_c_grid" in caplog.text
    else:
        assert "probe_c_grid" not in caplog.text
