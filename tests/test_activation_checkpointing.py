"""--gradient_checkpointing: every encoder layer really is recomputed, and the weights are those of a run without it
(dropout draws the same masks in the recompute), so it may also be switched on when resuming; and a run that runs
out of memory says so, names what fits, and goes on from its last checkpoint to the weights it would have had."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from conftest import save_tiny_encoder, tiny_configs
from safetensors.torch import load_file

import xfer_nlp
import xfer_nlp.loop
import xfer_nlp.probe
from xfer_nlp.errors import ConfigError, OutOfMemory


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """How many times a layer's forward went through torch's checkpoint (transformers binds it when enabling)."""
    calls = []
    real = transformers.modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    return calls


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


@pytest.mark.parametrize("mode,extra", [
    ("finetune", {"mixed_precision": "bf16"}), ("lora", {}), ("scratch", {}), ("contrastive", {"pair_iterations": 1}),
    ("finetune", {"pooling": "mean"})], ids=["finetune-bf16", "lora", "scratch", "contrastive", "finetune-mean-pooled"])
def test_recomputed_layers_train_the_same_weights(mode, extra, tiny_run, tmp_path, checkpoint_calls):
    run = {"mixed_precision": "no", **tiny_run, "mode": mode, "num_train_epochs": 2, **extra}
    plain = xfer_nlp.run(**{**run, "output_dir": str(tmp_path / "plain")})
    assert not checkpoint_calls
    checked = xfer_nlp.run(**{**run, "output_dir": str(tmp_path / "checkpointed")}, gradient_checkpointing=True)
    steps = checked.results["history"][-1]["step"]
    # one forward a step (contrastive's pairs go through as one batch), each through the tiny encoder's 2 layers
    assert len(checkpoint_calls) == steps * 2
    log = (tmp_path / "checkpointed" / "train.log").read_text()
    assert "recomputed in the backward pass (--gradient_checkpointing)" in log
    same_weights(tmp_path / "plain" / "model.safetensors", tmp_path / "checkpointed" / "model.safetensors")
    assert checked.metrics == plain.metrics
    assert "checkpointing" not in (tmp_path / "checkpointed" / "config.json").read_text()  # the export is as ever


def test_a_run_resumed_with_it_switched_on_ends_at_the_same_weights(tiny_run, tmp_path, checkpoint_calls):
    run = dict(tiny_run, mode="finetune", num_train_epochs=2, save_steps=3, save_total_limit=None, mixed_precision="no")
    out, ref = Path(run["output_dir"]), tmp_path / "uninterrupted"
    xfer_nlp.run(**run)
    out.rename(ref)
    shutil.copytree(ref, out)
    (out / "results.json").unlink()
    step = 6
    for later in (c for c in (out / "checkpoints").glob("checkpoint-*") if int(c.name.split("-")[1]) > step):
        shutil.rmtree(later)
    resumed = xfer_nlp.run(**run, resume_from_checkpoint=str(out / "checkpoints" / f"checkpoint-{step}"),
                           gradient_checkpointing=True)
    assert resumed.results["resumed"]["from_step"] == step and checkpoint_calls
    same_weights(ref / "model.safetensors", out / "model.safetensors")
    assert resumed.metrics == json.loads((ref / "results.json").read_text())["metrics"]


def test_where_it_cannot_apply_the_run_stops_before_training(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="--gradient_checkpointing does not apply to probe: .* Use it with finetune, "
                                          "scratch, lora, contrastive"):
        xfer_nlp.run(**tiny_run, mode="probe", gradient_checkpointing=True)
    for family in ("albert", "mpnet"):  # transformers has no activation checkpointing for these two
        folder = save_tiny_encoder(tiny_configs()[family], tmp_path / family)
        with pytest.raises(ConfigError, match=r"--gradient_checkpointing: transformers' \w+Model \((ALBERT|MPNet)\) "
                                              "does not support activation checkpointing. Leave the flag out"):
            xfer_nlp.run(**dict(tiny_run, model_name_or_path=str(folder)), mode="finetune",
                         gradient_checkpointing=True)
    assert not (tmp_path / "out" / "results.json").exists()


def exhaust_memory(*_args, **_kwargs):
    torch.empty(1 << 50, dtype=torch.uint8)  # a petabyte: the CPU allocator's own refusal, as when a batch is too big


def test_out_of_memory_in_a_step_names_what_fits_and_checkpointing_goes_on_to_the_same_weights(tiny_run, tmp_path):
    run = dict(tiny_run, mode="finetune", num_train_epochs=2, save_steps=3, save_total_limit=None, mixed_precision="no")
    reference = tmp_path / "uninterrupted"
    xfer_nlp.run(**{**run, "output_dir": str(reference)})
    with pytest.raises(OutOfMemory) as stopped:  # 10 steps an epoch; checkpoints every 3
        xfer_nlp.run(**run, on_step=lambda step: step == 7 and exhaust_memory())
    assert str(stopped.value).startswith(
        "Out of memory in a training step at step 7 (epoch 0.7); the last checkpoint is checkpoint-6 ([enforce fail")
    assert "can't allocate memory" in str(stopped.value) and str(stopped.value).endswith(
        "To fit, use --gradient_checkpointing (each encoder layer recomputed in the backward pass: the same weights, "
        "for a third of the memory of a 512-token fine-tune on a CPU); or a smaller --per_device_train_batch_size "
        "(now 16) with --gradient_accumulation_steps making up the batch; or a shorter --max_seq_length (now 32). "
        "Resume with the same command, --resume_from_checkpoint latest and --gradient_checkpointing.")
    resumed = xfer_nlp.run(**run, resume_from_checkpoint="latest", gradient_checkpointing=True)
    assert resumed.results["resumed"]["from_step"] == 6
    same_weights(reference / "model.safetensors", Path(run["output_dir"]) / "model.safetensors")


def test_out_of_memory_evaluating_names_the_evaluation_batch(tiny_run, tmp_path, monkeypatch):
    run = dict(tiny_run, mode="finetune", num_train_epochs=2, save_steps=4, save_total_limit=None, mixed_precision="no")
    reference = tmp_path / "uninterrupted"
    xfer_nlp.run(**{**run, "output_dir": str(reference)})
    with monkeypatch.context() as patched:
        patched.setattr(xfer_nlp.loop, "evaluate", exhaust_memory)
        with pytest.raises(OutOfMemory) as stopped:  # the first evaluation: the end of epoch 1, step 10
            xfer_nlp.run(**run)
    assert str(stopped.value).startswith("Out of memory evaluating validation at step 10 (epoch 1); the last "
                                         "checkpoint is checkpoint-8 ([enforce fail")
    assert str(stopped.value).endswith("Lower --per_device_eval_batch_size (now 32). Resume with the same command, "
                                       "--resume_from_checkpoint latest and --per_device_eval_batch_size 8.")
    xfer_nlp.run(**{**run, "per_device_eval_batch_size": 8}, resume_from_checkpoint="latest")
    same_weights(reference / "model.safetensors", Path(run["output_dir"]) / "model.safetensors")


def test_out_of_memory_encoding_for_the_probe_names_the_batch_and_keeps_the_cached_shards(tiny_run, monkeypatch):
    run = dict(tiny_run, mode="probe", feature_cache_shard_size=64)  # train: 3 shards of at most 64 texts
    real, calls = xfer_nlp.probe.encode, []

    def second_shard_fails(*args, **kwargs):
        calls.append(1)
        return exhaust_memory() if len(calls) == 2 else real(*args, **kwargs)
    with monkeypatch.context() as patched:
        patched.setattr(xfer_nlp.probe, "encode", second_shard_fails)
        with pytest.raises(OutOfMemory) as stopped:
            xfer_nlp.run(**run)
    assert str(stopped.value).startswith("Out of memory encoding train (shard 2 of 3) in batches of 32 texts ([enforce")
    assert str(stopped.value).endswith("Lower --per_device_eval_batch_size (e.g. 8) and run again; the 1 shard(s) "
                                       "before it are in the feature cache and are read, not encoded.")
    again = xfer_nlp.run(**{**run, "per_device_eval_batch_size": 8})
    assert again.results["probe"]["feature_cache_shards"]["train"] == "1 of 3"
