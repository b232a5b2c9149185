"""Transfer schedules: the pure stage/depth functions, and what really trains when in a run (1 and 2 processes)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import launch

import xfer_nlp
from xfer_nlp import schedules
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.errors import ConfigError
from xfer_nlp.families import BY_TYPE, Layout
from xfer_nlp.modes import build

# The parameter names of a 6-layer BERT classifier (one weight per module is enough to place it).
BERT6 = (["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"]
         + [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(6)]
         + [f"bert.encoder.layer.{i}.output.LayerNorm.bias" for i in range(6)]
         + ["bert.pooler.dense.weight", "classifier.weight", "classifier.bias"])
HEAD = {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"}
BERT = Layout(BY_TYPE["bert"], pooled=False, layers=6)


def pretrained(model_dir):
    """The encoder's tensors as named inside the mean-pooling classifier (which has no pooler): the tests that read
    them name pooling="mean", since the trained modes' default is now the stock head."""
    return {f"encoder.{k}": v for k, v in load_file(model_dir / "model.safetensors").items()
            if not k.startswith("pooler")}


def layer(i):
    return {f"bert.encoder.layer.{i}.attention.self.query.weight", f"bert.encoder.layer.{i}.output.LayerNorm.bias"}


def test_stages_unfreeze_from_the_top_embeddings_last():
    assert {BERT.layer_index(n) for n in BERT6} == {None, 0, 1, 2, 3, 4, 5}
    assert set(schedules.trainable_at_stage(0, BERT6, BERT)) == HEAD
    assert set(schedules.trainable_at_stage(1, BERT6, BERT)) == HEAD | layer(5)
    assert set(schedules.trainable_at_stage(2, BERT6, BERT)) == HEAD | layer(5) | layer(4)
    assert set(schedules.trainable_at_stage(6, BERT6, BERT)) == set(BERT6) - {n for n in BERT6 if "embeddings" in n}
    assert set(schedules.trainable_at_stage(7, BERT6, BERT)) == set(BERT6)


def test_stage_at_counts_fractional_intervals():
    # 10 steps an epoch, a stage every half epoch, 3 stages in all
    assert [schedules.stage_at(s, 10, 0.5, 2) for s in (0, 4, 5, 9, 10, 14, 15, 99)] == [0, 0, 1, 1, 2, 2, 2, 2]


def test_freeze_layers_selects_embeddings_and_bottom_layers():
    emb = {n for n in BERT6 if "embeddings" in n}
    assert set(schedules.frozen_by_freeze_layers(0, BERT6, BERT)) == emb
    assert set(schedules.frozen_by_freeze_layers(2, BERT6, BERT)) == emb | layer(0) | layer(1)
    assert set(schedules.frozen_by_freeze_layers(-1, BERT6, BERT)) == set(BERT6) - HEAD - layer(5)
    assert set(schedules.frozen_by_freeze_layers(6, BERT6, BERT)) == set(BERT6) - HEAD
    # the same choices in the words the card and the report use
    assert [schedules.frozen_phrase(k) for k in (0, 2, -1)] == [
        "the embeddings", "the embeddings and the bottom 2 encoder layers",
        "the embeddings and all but the top 1 encoder layer"]


def test_depths_read_peft_names():
    names = ["base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.default.weight",
             "base_model.model.bert.encoder.layer.0.output.dense.lora_B.default.weight",
             "base_model.model.classifier.modules_to_save.default.weight"]
    assert [Layout(BY_TYPE["bert"], pooled=False, layers=2).depth(n) for n in names] == [1, 2, 0]


def test_param_groups_decay_by_depth_and_skip_decay_on_biases_and_norms(tiny_model_dir):
    cfg = resolve(RunConfig(mode="finetune", model_name_or_path=str(tiny_model_dir)))
    built = build(cfg, ("0", "1"))
    model = built.model
    trainable = {n for n, _ in model.named_parameters()}
    groups = schedules.param_groups(model, built.layout, 1e-3, 0.01, 0.5, trainable)
    by_label = {}
    for g in groups:
        by_label.setdefault(g.label, set()).add(g.lr)
        for n in g.names:
            param = dict(model.named_parameters())[n]
            assert g.weight_decay == (0.01 if param.ndim >= 2 else 0.0), n
    assert by_label == {"head": {1e-3}, "layer.1": {5e-4}, "layer.0": {2.5e-4}, "embeddings": {1.25e-4}}
    assert sorted(n for g in groups for n in g.names) == sorted(trainable)


def test_slanted_triangular_rises_then_falls_to_peak_over_ratio():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedules.slanted_triangular(opt, total_steps=100, cut_frac=0.1, ratio=32)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 32)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 10
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a > b for a, b in zip(lrs[10:-1], lrs[11:]))
    assert lrs[-1] == pytest.approx((1 + (1 - 89 / 90) * 31) / 32)


def test_gradual_unfreezing_run_trains_each_layer_from_its_stage(tiny_run, tiny_model_dir):
    """160 examples / 16 = 10 steps an epoch; stage k (head, layer.1, layer.0, embeddings) begins at epoch k."""
    result = xfer_nlp.run(mode="finetune", num_train_epochs=4, learning_rate=1e-3, gradual_unfreezing=True,
                          layer_lr_decay=0.5, lr_scheduler_type="stlr", save_total_limit=0, pooling="mean", **tiny_run)
    schedule = result.results["schedule"]
    assert [(s["adds"], s["from_step"]) for s in schedule["stages"]] == [
        ("head", 0), ("layer.1", 10), ("layer.0", 20), ("embeddings", 30)]
    assert {g["group"]: g["lr"] for g in schedule["groups"]} == {
        "head": 1e-3, "layer.1": 5e-4, "layer.0": 2.5e-4, "embeddings": 1.25e-4}
    start = pretrained(tiny_model_dir)
    after = [load_file(result.output_dir / "checkpoints" / f"checkpoint-{s}" / "model.safetensors")
             for s in (10, 20, 30, 40)]

    def moved(state, part):
        return [not torch.equal(state[k], v) for k, v in start.items() if part in k]

    for epoch, state in enumerate(after):
        assert any(moved(state, "layer.1.")) == (epoch >= 1), f"layer.1 after epoch {epoch + 1}"
        assert any(moved(state, "layer.0.")) == (epoch >= 2), f"layer.0 after epoch {epoch + 1}"
        assert any(moved(state, "embeddings.")) == (epoch >= 3), f"embeddings after epoch {epoch + 1}"
        assert not torch.equal(state["classifier.weight"], after[0]["classifier.weight"]) or epoch == 0
    log = (result.output_dir / "train.log").read_text()
    assert "Gradual unfreezing: from epoch 0 + head, from epoch 1 + layer.1" in log
    assert "peak learning rates head 1.00e-03, layer.1 5.00e-04, layer.0 2.50e-04, embeddings 1.25e-04" in log


def test_gradual_unfreezing_under_two_process_ddp(tiny_model_dir, tiny_data_dir, tmp_path):
    """Frozen-then-thawed parameters are registered with DDP and really train once thawed, on both ranks alike."""
    out = tmp_path / "ddp"
    results, _ = launch(2, "finetune", out, tiny_model_dir, tiny_data_dir, tmp_path, "--per_device_train_batch_size",
                        "8", "--num_train_epochs", "3", "--learning_rate", "1e-3", "--gradual_unfreezing",
                        "--layer_lr_decay", "0.8", "--save_total_limit", "0", "--pooling", "mean")
    start = pretrained(tiny_model_dir)
    steps = [h["step"] for h in results["history"]]
    first, last = (load_file(out / "checkpoints" / f"checkpoint-{s}" / "model.safetensors") for s in (steps[0], steps[-1]))
    assert all(torch.equal(first[k], v) for k, v in start.items()), "the encoder moved during the head-only stage"
    assert any(not torch.equal(last[k], v) for k, v in start.items() if "layer.1." in k)
    assert any(not torch.equal(last[k], v) for k, v in start.items() if "layer.0." in k)
    assert all(torch.equal(last[k], v) for k, v in start.items() if "embeddings" in k), "embeddings thaw at stage 3"
    assert results["metrics"]["validation"]["accuracy"] > 0.5


def test_freeze_layers_keeps_exactly_those_weights(tiny_run, tiny_model_dir):
    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, learning_rate=1e-3, freeze_layers=1, pooling="mean",
                          **tiny_run)
    start = pretrained(tiny_model_dir)
    after = load_file(result.output_dir / "model.safetensors")
    for name, tensor in start.items():
        frozen = "embeddings" in name or "layer.0." in name
        assert torch.equal(after[name], tensor) == frozen, name
    expected = sum(v.numel() for k, v in after.items() if "layer.1." in k or k.startswith("classifier"))
    assert result.trainable_params == expected


def test_freeze_layers_with_lora_freezes_bottom_adapters(tiny_run, tiny_model_dir):
    cfg = resolve(RunConfig(mode="lora", model_name_or_path=str(tiny_model_dir), freeze_layers=-1))
    model = build(cfg, ("0", "1")).model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any("layer.0." in n for n in trainable)
    assert any("layer.1." in n and "lora_" in n for n in trainable)


def test_reinit_layers_replaces_only_the_top_layers(tiny_model_dir):
    cfg = resolve(RunConfig(mode="finetune", model_name_or_path=str(tiny_model_dir), reinit_layers=1, pooling="mean"))
    model = build(cfg, ("0", "1")).model
    again = build(cfg, ("0", "1")).model
    start = pretrained(tiny_model_dir)
    state = model.state_dict()
    for name, tensor in start.items():
        if name.endswith(".weight") and "LayerNorm" not in name and "embeddings" not in name:
            assert torch.equal(state[name], tensor) == ("layer.1." not in name), name
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items()), "re-initialisation is seeded"


@pytest.mark.parametrize("overrides,message", [
    ({"mode": "probe", "gradual_unfreezing": True}, "--gradual_unfreezing does not apply to mode probe"),
    ({"mode": "scratch", "layer_lr_decay": 0.8}, "--layer_lr_decay does not apply to mode scratch"),
    ({"mode": "lora", "reinit_layers": 2}, "--reinit_layers does not apply to mode lora"),
    ({"mode": "finetune", "layer_lr_decay": 1.5}, "--layer_lr_decay must be in (0, 1]"),
    ({"mode": "finetune", "lr_scheduler_type": "cosin"}, "did you mean 'cosine'"),
    ({"mode": "finetune", "unfreeze_interval": 0}, "--unfreeze_interval must be a positive"),
])
def test_schedule_flags_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=None) as e:
        resolve(RunConfig(**overrides))
    assert message in str(e.value)


def test_freeze_layers_out_of_range_names_the_limits(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"--freeze_layers 3 is outside -1..2"):
        build(resolve(RunConfig(model_name_or_path=str(tiny_model_dir), freeze_layers=3)), ("0", "1"))
    with pytest.raises(ConfigError, match="--reinit_layers 5 is more than the encoder's 2 layers"):
        build(resolve(RunConfig(model_name_or_path=str(tiny_model_dir), reinit_layers=5)), ("0", "1"))


def test_schedule_is_saved_in_results(tiny_run):
    result = xfer_nlp.run(mode="finetune", num_train_epochs=1, learning_rate=1e-3, layer_lr_decay=0.9, **tiny_run)
    saved = json.loads((result.output_dir / "results.json").read_text())["schedule"]
    assert saved["layer_lr_decay"] == 0.9 and saved["stages"] == []
    assert saved["groups"][0]["group"] == "head" and saved["groups"][-1]["group"] == "embeddings"
