"""Crash safety: a SIGKILLed run resumes to the same weights; damaged checkpoints are never trusted."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import data_folder, free_port, launch_env, make_rows, run_and_kill
from safetensors.torch import load_file

import xfer_nlp
from xfer_nlp.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.fixture(scope="module")
def bigger_data(tmp_path_factory):
    """Enough batches that a run lasts a few seconds, so it can be killed mid-epoch."""
    return data_folder(tmp_path_factory, "resume-data", train=make_rows(1600, 11), validation=make_rows(64, 12))


def recipe_cmd(processes, model, data, out, *extra):
    launcher = ["--multi_gpu", "--main_process_port", free_port()] if processes > 1 else ["--cpu"]
    return [str(ACCELERATE), "launch", *launcher, "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/sentiment.py", "--mode", "finetune",
            "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_seq_length", "32", "--per_device_train_batch_size", str(16 // processes), "--num_train_epochs", "2",
            "--learning_rate", "1e-3", "--save_steps", "10", "--save_total_limit", "3", "--logging_steps", "7",
            "--seed", "0", *extra]


def run_to_end(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=launch_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# 100 steps an epoch; with a stage every quarter epoch the kill at step 30 lands inside stage 1 (layer.1 thawed).
SCHEDULE = ("--gradual_unfreezing", "--unfreeze_interval", "0.25", "--layer_lr_decay", "0.5",
            "--lr_scheduler_type", "stlr")


# Contrastive trains on pairs (one round: 3,200 of them, 200 steps an epoch, two epochs), then fits the probe's head.
CONTRASTIVE = ("--mode", "contrastive", "--pair_iterations", "1")


@pytest.mark.parametrize("processes,schedule", [(1, ()), (2, ()), (2, SCHEDULE), (1, CONTRASTIVE)],
                         ids=["1-process", "2-process", "2-process-mid-unfreezing-schedule", "1-process-contrastive"])
def test_sigkill_then_resume_matches_uninterrupted_run(processes, schedule, tiny_model_dir, bigger_data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(recipe_cmd(processes, tiny_model_dir, bigger_data, straight, *schedule))
    run_and_kill(recipe_cmd(processes, tiny_model_dir, bigger_data, killed, *schedule), killed, after_step=30, cwd=ROOT)
    refused = subprocess.run(recipe_cmd(processes, tiny_model_dir, bigger_data, killed, *schedule),
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert refused.returncode != 0 and "--resume_from_checkpoint latest" in refused.stderr
    resumed = run_to_end(recipe_cmd(processes, tiny_model_dir, bigger_data, killed, *schedule,
                                    "--resume_from_checkpoint", "latest"))
    assert "Resumed from" in resumed.stderr
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (straight, killed))
    def untimed(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert ra["metrics"] == rb["metrics"] and untimed(ra["history"]) == untimed(rb["history"])
    # The loss logged every 7 steps: the kill's checkpoint (step 30) falls inside a window, which it carries over.
    assert ra["losses"] == rb["losses"] and len(ra["losses"]) >= 2 * 100 // 7
    assert len(list((killed / "checkpoints").glob("checkpoint-*"))) <= 3  # save_total_limit


@pytest.mark.parametrize("mode", ["finetune", "contrastive"])
def test_resumed_in_the_first_epoch_the_second_epoch_matches(mode, tiny_run, tmp_path):
    """A run resumed from a checkpoint of its first epoch (mid-epoch, and the epoch's end) must cross into the
    second epoch with the batch order the uninterrupted run had: Accelerate's loader counts its own passes and
    re-sets the sampler's epoch from that count, which a resumed process starts at 0. Where the SIGKILL test above
    lands is up to the machine's speed; these checkpoints are chosen."""
    run = dict(tiny_run, mode=mode, num_train_epochs=2, save_steps=3, save_total_limit=None, mixed_precision="no",
               pair_iterations=1)
    if mode == "finetune":
        del run["pair_iterations"]
    out, ref = Path(run["output_dir"]), tmp_path / "uninterrupted"
    xfer_nlp.run(**run)
    out.rename(ref)
    first_epoch_end = json.loads((ref / "results.json").read_text())["history"][0]["step"]
    assert json.loads((ref / "results.json").read_text())["resumed"] is None
    saved = sorted(int(c.name.split("-")[1]) for c in (ref / "checkpoints").glob("checkpoint-*"))
    mid_epoch = max(s for s in saved if s < first_epoch_end)
    assert first_epoch_end in saved and 0 < mid_epoch < first_epoch_end
    last = max(saved)  # the end of epoch 2: the last weights, which the export need not be (it keeps the best epoch)
    want = {f: load_file(ref / f) for f in ("model.safetensors", f"checkpoints/checkpoint-{last}/model.safetensors")}
    for step in (mid_epoch, first_epoch_end):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(ref, out)
        (out / "results.json").unlink()
        for later in (c for c in (out / "checkpoints").glob("checkpoint-*") if int(c.name.split("-")[1]) > step):
            shutil.rmtree(later)
        xfer_nlp.run(**run, resume_from_checkpoint=str(out / "checkpoints" / f"checkpoint-{step}"))
        assert f"Resumed from {out / 'checkpoints' / f'checkpoint-{step}'}" in (out / "train.log").read_text()
        # the time trained before the checkpoint counts: written with every checkpoint, evaluated or not (mid_epoch)
        before = json.loads((out / "checkpoints" / f"checkpoint-{step}" / "xfer_state.json").read_text())
        results = json.loads((out / "results.json").read_text())
        assert before["progress"]["seconds"] > 0
        assert results["resumed"] == {"from_step": step, "seconds_before": round(before["progress"]["seconds"], 2)}
        assert results["train_seconds"] > results["resumed"]["seconds_before"]
        for file, weights in want.items():
            got = load_file(out / file)
            for name in weights:
                assert torch.equal(weights[name], got[name]), f"{file}: {name} differs after resuming at step {step}"
        # logged every 5 steps, checkpointed every 3: a resumed window's figure is the uninterrupted run's
        assert results["losses"] == json.loads((ref / "results.json").read_text())["losses"]


@pytest.fixture
def interrupted(tiny_model_dir, tiny_data_dir, tmp_path):
    """A finished run with its checkpoints, then made to look interrupted (results.json removed)."""
    out = tmp_path / "run"
    xfer_nlp.run(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                 output_dir=str(out), max_seq_length=32, per_device_train_batch_size=16, num_train_epochs=2,
                 save_steps=4, save_total_limit=None, seed=0)
    (out / "results.json").unlink()
    return out


def resume_kwargs(tiny_model_dir, tiny_data_dir, out, spec="latest", **kw):
    return dict(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                output_dir=str(out), max_seq_length=32, per_device_train_batch_size=16, num_train_epochs=2,
                save_steps=4, save_total_limit=None, seed=0, resume_from_checkpoint=spec, **kw)


def test_latest_skips_a_truncated_checkpoint(interrupted, tiny_model_dir, tiny_data_dir, caplog):
    checkpoints = sorted((interrupted / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    newest = checkpoints[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    # what a kill mid-save leaves is never a candidate, and goes: it only holds space
    left = [interrupted / "checkpoints" / ".tmp-checkpoint-99", interrupted / "checkpoints" / ".best.safetensors.tmp7"]
    left[0].mkdir()
    (left[0] / "optimizer.pt").write_bytes(b"half")
    left[1].write_bytes(b"half")
    with caplog.at_level("INFO", logger="xfer_nlp"):
        result = xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted))
    assert f"Skipping damaged checkpoint {checkpoints[-1]}" in caplog.text and "truncated" in caplog.text
    assert result.results["history"][-1]["epoch"] == 2
    for path in left:
        assert not path.exists() and f"Removed {path}, left half-written by an earlier process" in caplog.text


def test_explicit_damaged_checkpoint_is_an_error(interrupted, tiny_model_dir, tiny_data_dir):
    target = sorted((interrupted / "checkpoints").glob("checkpoint-*"))[0]
    (target / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged: optimizer.pt is truncated"):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, spec=str(target)))


def test_a_manifest_that_is_not_ours_is_damage_not_a_traceback(interrupted):
    from xfer_nlp.checkpoint import MANIFEST, verify

    target = sorted((interrupted / "checkpoints").glob("checkpoint-*"))[0]
    assert verify(target) is None
    # an entry that is not a record, a size that is not a number, files that are not a mapping
    for files in ({"model.safetensors": "its hash"}, {"model.safetensors": {"size": "1"}}, []):
        (target / MANIFEST).write_text(json.dumps({"files": files}))
        assert verify(target) == "its manifest is unreadable", files


def test_resume_with_different_settings_is_refused(interrupted, tiny_model_dir, tiny_data_dir):
    with pytest.raises(CheckpointError, match="learning_rate: checkpoint 5e-05, now 0.01"):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, learning_rate=1e-2))


def test_resume_on_data_changed_since_the_checkpoint_is_refused(tiny_model_dir, tiny_data_dir, tmp_path):
    """The config was all a resume checked: a label fixed in the training file between the kill and the resume went
    on from the checkpoint as if it were the same run, its batches drawn from other rows."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    kwargs = resume_kwargs(tiny_model_dir, data, tmp_path / "run", spec=None)
    xfer_nlp.run(**kwargs)
    (tmp_path / "run" / "results.json").unlink()
    kwargs["resume_from_checkpoint"] = "latest"
    for split in ("train", "validation"):
        file = data / f"{split}.jsonl"
        as_it_was = file.read_text()
        rows = as_it_was.splitlines()
        first = json.loads(rows[0])
        rows[0] = json.dumps({**first, "label": 1 - first["label"]})
        file.write_text("\n".join(rows) + "\n")
        with pytest.raises(CheckpointError, match=f"Cannot resume: the {split} rows differ from those the "
                                                  "checkpoint's run read"):
            xfer_nlp.run(**kwargs)
        file.write_text(as_it_was)
    assert xfer_nlp.run(**kwargs).results["resumed"]["from_step"] > 0


def test_resume_of_a_finished_run_or_into_another_folder_says_what_to_do(interrupted, tiny_model_dir, tiny_data_dir,
                                                                        tmp_path):
    """A finished run was told to pass --overwrite_output_dir (which starts over) as if it had not asked to resume;
    another folder's checkpoint was refused as a different run, 'output_dir: checkpoint ..., now ...'."""
    checkpoint = sorted((interrupted / "checkpoints").glob("checkpoint-*"))[0]
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(CheckpointError, match=rf"Cannot resume in --output_dir '{elsewhere}' from a checkpoint of the "
                                              rf"run in '{interrupted}': a run goes on in its own folder. Resume with "
                                              rf"--output_dir {interrupted}, or start a new run"):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, elsewhere, spec=str(checkpoint)))
    (interrupted / "results.json").write_text("{}")  # as a finished run leaves it
    with pytest.raises(xfer_nlp.ConfigError, match=rf"'{interrupted}' holds a finished run .*: there is nothing to "
                                                   "resume. To train it again from the start, pass "
                                                   "--overwrite_output_dir instead of --resume_from_checkpoint."):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted))


def test_resume_ignores_settings_the_mode_never_reads(interrupted, tiny_model_dir, tiny_data_dir):
    # lora's rank and contrastive's pair rounds cannot change a finetune run (a default changed between versions
    # used to refuse the resume); a setting finetune reads still must match
    with pytest.raises(CheckpointError, match="learning_rate") as refused:
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, learning_rate=1e-2, lora_r=4,
                                     pair_iterations=3))
    assert "lora_r" not in str(refused.value) and "pair_iterations" not in str(refused.value)
    result = xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, lora_r=4, pair_iterations=3))
    assert result.results["resumed"]["from_step"] > 0


def test_resume_without_checkpoints_is_an_error(tiny_model_dir, tiny_data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="No intact checkpoint"):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, tmp_path / "empty"))
    assert not (tmp_path / "empty").exists(), "refused before the folder (or its log) is made"


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tiny_model_dir, tiny_data_dir, tmp_path):
    with pytest.raises(xfer_nlp.XferError, match="loss became nan.*Lower --learning_rate"):
        xfer_nlp.run(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                     output_dir=str(tmp_path / "o"), max_seq_length=32, per_device_train_batch_size=16,
                     num_train_epochs=3, learning_rate=1e12, warmup_ratio=0.5, logging_steps=1, save_steps=1)
    checkpoints = list((tmp_path / "o" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "the last good checkpoint must survive"
    for checkpoint in checkpoints:  # and every checkpoint left is a good one
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), f"{checkpoint} holds non-finite weights"
    assert not (tmp_path / "o" / "results.json").exists()


class Planted:
    """A pickle that runs code when unpickled: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _replant_manifest(checkpoint: Path) -> None:
    """What an attacker who can write the folder does: recompute the manifest so the check passes."""
    import hashlib

    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps({"step": 0, "files": files}))


CHECKPOINT_FILES = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng-rank0.safetensors", "xfer_state.json",
                    "manifest.json"]


@pytest.mark.parametrize("name", CHECKPOINT_FILES + ["optimizer.pt (inside its real state)",
                                                     "scheduler.pt (inside its real state)"])
def test_a_pickle_planted_in_a_checkpoint_never_runs(name, interrupted, tiny_model_dir, tiny_data_dir, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    target = sorted((interrupted / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    file = target / name.split()[0]
    if "inside" in name:
        state = torch.load(file, weights_only=True)
        torch.save({**state, "planted": Planted(marker)}, file)
    else:
        file.write_bytes(pickle.dumps(Planted(marker)))
    if name != "manifest.json":
        _replant_manifest(target)
    try:
        result = xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, spec=str(target)))
    except xfer_nlp.XferError as e:
        assert "Checkpoint" in str(e) or "checkpoint" in str(e)
    else:  # proceeding is fine only from the legitimate data
        assert result.results["history"][-1]["epoch"] == 2
    assert not marker.exists(), f"code planted in {name} ran on resume"


@pytest.mark.parametrize("field,value", [("step", "12"), ("window_loss", None), ("stopped_early", 1),
                                         ("history", {"step": 4}), ("epoch", True)])
def test_a_progress_record_of_the_wrong_kinds_is_refused_by_name(field, value, interrupted, tiny_model_dir,
                                                                 tiny_data_dir):
    target = sorted((interrupted / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    state = json.loads((target / "xfer_state.json").read_text())
    state["progress"][field] = value
    (target / "xfer_state.json").write_text(json.dumps(state))
    _replant_manifest(target)  # past the digest check, as a hand edit or an attacker would be
    with pytest.raises(CheckpointError, match=rf"progress record is malformed \({field}="):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, spec=str(target)))


def test_a_legacy_pickle_checkpoint_is_refused_not_unpickled(interrupted, tiny_model_dir, tiny_data_dir, tmp_path):
    """Accelerate's save_state layout (what earlier versions wrote): its RNG pickle is never opened."""
    import pickle

    marker = tmp_path / "pwned"
    target = sorted((interrupted / "checkpoints").glob("checkpoint-*"))[0]
    for f in ("optimizer.pt", "scheduler.pt", "rng-rank0.safetensors"):
        (target / f).unlink()
    (target / "random_states_0.pkl").write_bytes(pickle.dumps(Planted(marker)))
    _replant_manifest(target)
    with pytest.raises(CheckpointError, match="lacks scheduler.pt, optimizer.pt, rng-rank0.safetensors"):
        xfer_nlp.run(**resume_kwargs(tiny_model_dir, tiny_data_dir, interrupted, spec=str(target)))
    assert not marker.exists()
