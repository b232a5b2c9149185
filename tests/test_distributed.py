"""Real 2-process DDP launches on CPU (gloo) against the same run in one process.

`accelerate launch --cpu --num_processes 2` starts one process (accelerate#2741), so the 2-process runs use the
torchrun-style launcher (`--multi_gpu`), for which xfer_nlp selects gloo on a machine without GPUs.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, launch_env, make_rows, run_and_kill, save_tiny_encoder, tiny_configs, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(processes, mode, out, tiny_model_dir, tiny_data_dir, tmp_path, *extra):
    kind = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    cmd = [str(ACCELERATE), "launch", *kind, "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           "recipes/sentiment.py", "--mode", mode, "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(tiny_data_dir), "--output_dir", str(out), "--max_seq_length", "32",
           "--feature_cache_dir", str(tmp_path / f"features{processes}"), "--seed", "0", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=launch_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), result


@pytest.mark.parametrize("mode,extra,tolerance", [
    ("probe", [], 0.0),  # features are gathered, then every process fits the same head: identical
    # Unclipped: with the default --max_grad_norm 1.0 the tiny model is still climbing after 4 epochs, where the two
    # launches' different dropout masks leave them up to 0.15 apart; the comparison is about DDP, not clipping.
    ("finetune", ["--num_train_epochs", "4", "--learning_rate", "1e-3", "--max_grad_norm", "0"], 0.1),
    # the cosine loss reads the head's input through DDP's wrapper (it stopped in "DistributedDataParallel has no
    # attribute `classifier`")
    ("contrastive", ["--pair_iterations", "4", "--probe_c_grid", "1"], 0.1),
])
def test_two_processes_match_one(mode, extra, tolerance, tiny_model_dir, tiny_data_dir, tmp_path):
    one, _ = launch(1, mode, tmp_path / "one", tiny_model_dir, tiny_data_dir, tmp_path,
                    "--per_device_train_batch_size", "16", *extra)
    two, result = launch(2, mode, tmp_path / "two", tiny_model_dir, tiny_data_dir, tmp_path,
                         "--per_device_train_batch_size", "8", *extra)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    for split in ("validation", "test"):
        assert abs(two["metrics"][split]["accuracy"] - one["metrics"][split]["accuracy"]) <= tolerance
    # one voice: the table is printed once, the log written once
    assert result.stdout.count("trained ") == 1
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("Saved the model") == 1
    # No warning but, at most once, the one a tiny random model may earn: a class it never gets right. (And the
    # note on idle cores where this machine has more than the two single-thread processes the tests give it.)
    warnings = [line for line in log.splitlines() if "WARNING" in line and "Threads:" not in line]
    assert len(warnings) <= 1 and all("right (recall 0 for" in line for line in warnings), warnings
    if mode == "finetune":
        assert [r["step"] for r in two["history"]] == [r["step"] for r in one["history"]]


# A notebook cell: the run in a function that Accelerate's notebook_launcher starts in each process (Kaggle's two
# GPUs, or here two CPU processes over gloo).
NOTEBOOK = r"""
import json, sys
from accelerate import notebook_launcher
import xfer_nlp

def train():
    xfer_nlp.run(**json.loads(sys.argv[1]))

notebook_launcher(train, num_processes=2)
"""


def test_a_notebook_launches_two_processes_that_train_as_the_command_line_launch_does(tiny_model_dir, tiny_data_dir,
                                                                                       tmp_path):
    flags = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "mixed_precision": "no"}
    cli, _ = launch(2, "finetune", tmp_path / "cli", tiny_model_dir, tiny_data_dir, tmp_path,
                    *[f"--{k}={v}" for k, v in flags.items()])
    kwargs = dict(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                  output_dir=str(tmp_path / "notebook"), max_seq_length=32, seed=0, **flags)
    cell = subprocess.run([sys.executable, "-c", NOTEBOOK, json.dumps(kwargs)], capture_output=True, text=True,
                          cwd=tmp_path, env=launch_env(), timeout=600)
    assert cell.returncode == 0, cell.stderr[-3000:]
    notebook = json.loads((tmp_path / "notebook" / "results.json").read_text())
    assert notebook["num_processes"] == 2 and notebook["distributed_type"] == "MULTI_CPU"
    assert notebook["metrics"] == cli["metrics"] and notebook["losses"] == cli["losses"]
    assert (tmp_path / "notebook" / "train.log").read_text().count("Saved the model") == 1  # one voice


def test_cpu_flag_with_several_processes_warns(tiny_model_dir, tiny_data_dir, tmp_path):
    cmd = [str(ACCELERATE), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "recipes/sentiment.py", "--mode", "probe", "--model_name_or_path",
           str(tiny_model_dir), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path / "o"),
           "--feature_cache_dir", str(tmp_path / "f")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate issue #2741" in result.stderr and "--multi_gpu" in result.stderr


def test_sigterm_to_a_two_process_launch_is_one_line_with_the_resume_command(tiny_model_dir, tmp_path):
    """A scheduler stops a job by sending SIGTERM to all its processes, and the launcher passes it on to the
    workers; they used to die without a word. Now rank 0 says where the run stopped, once."""
    data = tmp_path / "big"
    write_jsonl(data / "train.jsonl", make_rows(3000, 5))
    write_jsonl(data / "validation.jsonl", make_rows(64, 6))
    out = tmp_path / "o"
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           "recipes/sentiment.py", "--mode", "finetune", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(data), "--output_dir", str(out), "--max_seq_length", "32",
           "--per_device_train_batch_size", "8", "--num_train_epochs", "3", "--save_steps", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launch_env(), start_new_session=True)
    deadline = time.time() + 300
    while not any((out / "checkpoints").glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before any checkpoint was seen; nothing was stopped"
    os.killpg(proc.pid, signal.SIGTERM)  # the whole job: launcher and workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count("error: Interrupted at step") == 1 and "the last checkpoint is checkpoint-" in stderr
    assert "--resume_from_checkpoint latest" in stderr


def test_an_fsdp_config_on_a_machine_without_gpus_is_one_clear_refusal(tiny_model_dir, tiny_data_dir, tmp_path):
    """Accelerate sets up FSDP only across GPUs: elsewhere the shipped config would run as DDP, with every process
    but one holding the empty weights of FSDP's low-memory loading."""
    out = tmp_path / "out"
    result = fsdp_launch(fsdp_config(tmp_path), "finetune", out, tiny_model_dir, tiny_data_dir, harness=False)
    assert result.returncode != 0
    assert ("error: This launch asks for FSDP (its Accelerate config), but Accelerate set up MULTI_CPU instead" in
            result.stderr and "recipes/accelerate_configs/cpu_ddp.yaml" in result.stderr), result.stderr[-3000:]
    assert "meta tensor" not in result.stderr and not (out / "results.json").exists()
    # One voice: rank 1 waits quietly while the launcher stops it, no traceback of its own.
    assert result.stderr.count("This launch asks for FSDP") == 1 and "KeyboardInterrupt" not in result.stderr


def fsdp_config(tmp_path, version: int = 2) -> Path:
    """The shipped FSDP config for 2 processes (on CPUs the tests run it through tests/fsdp_on_cpu.py)."""
    config = (ROOT / "recipes" / "accelerate_configs" / "fsdp.yaml").read_text()
    config = config.replace("num_processes: 8", "num_processes: 2").replace("mixed_precision: bf16",
                                                                            "mixed_precision: 'no'")
    if version == 1:  # FSDP 1's loading on rank 0 alone (sync_module_states) is refused by Accelerate on CPUs
        config = config.replace("fsdp_version: 2", "fsdp_version: 1").replace(
            "fsdp_cpu_ram_efficient_loading: true", "fsdp_cpu_ram_efficient_loading: false\n  fsdp_sync_module_states: false")
    path = tmp_path / f"fsdp{version}.yaml"
    path.write_text(config)
    return path


def fsdp_command(config: Path, mode, out, tiny_model_dir, tiny_data_dir, *extra, harness=True) -> list[str]:
    """The launch of the recipe under `config`; through tests/fsdp_on_cpu.py unless harness is False (then
    Accelerate sets up what it does on a machine without GPUs)."""
    return [str(ACCELERATE), "launch", "--config_file", str(config), "--main_process_port", free_port(),
            *([str(ROOT / "tests" / "fsdp_on_cpu.py")] if harness else []), "recipes/sentiment.py", "--mode", mode,
            "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out),
            "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--seed", "0", "--mixed_precision", "no",
            "--feature_cache_dir", str(out.parent / "features"), *extra]


def fsdp_launch(*args, harness=True) -> subprocess.CompletedProcess:
    return subprocess.run(fsdp_command(*args, harness=harness), capture_output=True, text=True, cwd=ROOT,
                          env=launch_env(), timeout=300)


def fsdp_run(*args) -> tuple[dict, subprocess.CompletedProcess]:
    result = fsdp_launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((args[2] / "results.json").read_text()), result


def fsdp_units(log: str) -> str:
    """What a run's log says FSDP made units of ("1 x Embedding, 2 x BertLayer": Accelerate's own units come too)."""
    return re.search(r"FSDP units, each gathered whole only while it computes: (.*), the rest of the model\.", log)[1]


def pipeline_accuracy(run_dir: Path, data_dir: Path) -> float:
    from transformers import pipeline

    rows = [json.loads(line) for line in (data_dir / "validation.jsonl").read_text().splitlines()]
    names = json.loads((run_dir / "results.json").read_text())["label_names"]
    classifier = pipeline("text-classification", model=str(run_dir), trust_remote_code=True)  # our pooled head
    predicted = classifier([r["text"] for r in rows], truncation=True, max_length=32)
    return sum(p["label"] == names[r["label"]] for p, r in zip(predicted, rows)) / len(rows)


def test_an_fsdp2_run_killed_and_resumed_exports_the_kept_weights_of_the_same_run_under_ddp(
        tiny_model_dir, tiny_data_dir, tmp_path):
    """FSDP2 holds every weight as a shard: the kept evaluation's weights have to be cut back into shards, and the
    export gathered whole, or the run ends in a refusal ("the kept weights do not fit") or exports the wrong model.
    Here a 2-process FSDP2 run is killed after a checkpoint, resumed (with --gradient_checkpointing switched on,
    which recomputes each layer inside FSDP's shards and changes no weight), and ends with the kept weights of an
    uninterrupted 2-process DDP run of the same steps."""
    extra = ["--num_train_epochs", "10", "--learning_rate", "3e-3", "--max_grad_norm", "0", "--pooling", "mean",
             "--save_steps", "20", "--logging_steps", "7"]
    ddp, _ = launch(2, "finetune", tmp_path / "ddp", tiny_model_dir, tiny_data_dir, tmp_path,
                    "--per_device_train_batch_size", "8", "--mixed_precision", "no", *extra)  # as fsdp_command
    assert ddp["best_step"] < ddp["history"][-1]["step"], "the kept weights must be an earlier evaluation's"
    out = tmp_path / "fsdp"
    args = (fsdp_config(tmp_path), "finetune", out, tiny_model_dir, tiny_data_dir, *extra)
    run_and_kill(fsdp_command(*args), out, after_step=40, cwd=ROOT)
    fsdp, result = fsdp_run(*args, "--resume_from_checkpoint", "latest", "--gradient_checkpointing")
    assert fsdp["resumed"]["from_step"] >= 40 and fsdp["distributed_type"] == "FSDP", result.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "recomputed in the backward pass" in log
    # The shipped config names no layer class: each encoder block of the pooled head's body is a unit of its own.
    assert "2 x BertLayer" in fsdp_units(log) and "BertEmbeddings" not in fsdp_units(log)
    assert [h["step"] for h in fsdp["history"]] == [h["step"] for h in ddp["history"]]
    assert fsdp["best_step"] == ddp["best_step"] and fsdp["metrics"] == ddp["metrics"]
    assert [r["step"] for r in fsdp["losses"]] == [r["step"] for r in ddp["losses"]]
    assert [r["loss"] for r in fsdp["losses"]] == pytest.approx([r["loss"] for r in ddp["losses"]], rel=1e-6)
    import torch
    from safetensors.torch import load_file

    mine, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-6) for k in mine)
    # the export is the plain model class: no FSDP subclass, and none of torch's FSDP sources beside modeling.py
    assert fsdp["files"] == ddp["files"] and not list(out.glob("_fsdp*"))
    assert json.loads((out / "config.json").read_text())["architectures"] == [fsdp["architecture"]]


@pytest.mark.parametrize("mode,extra", [("lora", []), ("contrastive", []), ("probe", []),
                                        ("finetune", ["--head_init", "probe", "--max_steps", "4"])])
def test_fsdp2_lora_contrastive_and_the_probe_export_the_model_they_scored(mode, extra, tiny_model_dir, tiny_data_dir,
                                                                          tmp_path):
    """LoRA and contrastive work on the sharded model after training: LoRA merges its adapters into the weights,
    contrastive fits its head into them. With the weights gathered on the main process alone, the merge on the
    others hung (a collective) and contrastive's head went into FSDP's gathered copy, not the shards: its export
    scored 0.5 where the run scored 0.96. Every process now takes the model whole, so pipeline() scores what the
    run did. The probe (alone, or LP-FT's before fine-tuning) encodes with the model unsharded, where the shipped
    config's low-memory loading had left the second process empty weights: it stopped in "Cannot copy out of meta
    tensor"."""
    result, launched = fsdp_run(fsdp_config(tmp_path), mode, tmp_path / "out", tiny_model_dir, tiny_data_dir, *extra)
    assert result["distributed_type"] == "FSDP" and result["num_processes"] == 2
    assert "FutureWarning" not in launched.stderr, launched.stderr[-3000:]  # LoRA rebuilt whole: peft's, none of ours
    if mode in ("contrastive", "probe"):  # well above chance, so an untrained head in the export could not pass for it
        assert result["metrics"]["validation"]["accuracy"] >= 0.8
    if extra:  # LP-FT: every process fitted the same head on gathered features before training
        assert result["head_init"]["validation"] >= 0.8
    assert pipeline_accuracy(tmp_path / "out", tiny_data_dir) == result["metrics"]["validation"]["accuracy"]


def test_fsdp_shards_each_encoder_block_of_any_family_and_refuses_a_config_naming_another_family_s(
        tiny_data_dir, tmp_path):
    """The shipped config named BertLayer, so every other family ended in Accelerate's `ValueError: Could not find
    the transformer layer class BertLayer in the model`; left without the name, Accelerate's fallback stops in
    fully_shard on RoBERTa and BERT alike (api._shard_by_block). It now names none and xfer_nlp wraps the model's
    own blocks; a config that names a class the model lacks gets the one to name."""
    roberta = save_tiny_encoder(tiny_configs()["roberta"], tmp_path / "roberta")
    config = fsdp_config(tmp_path)
    result, launched = fsdp_run(config, "finetune", tmp_path / "out", roberta, tiny_data_dir, "--num_train_epochs", "1")
    assert result["distributed_type"] == "FSDP" and result["architecture"] == "RobertaForSequenceClassification"
    units = fsdp_units((tmp_path / "out" / "train.log").read_text())
    assert "2 x RobertaLayer" in units and "RobertaEmbeddings" not in units, launched.stderr[-2000:]

    named = tmp_path / "named.yaml"
    named.write_text(config.read_text().replace("fsdp_config:\n", "fsdp_config:\n  fsdp_transformer_layer_cls_to_wrap: BertLayer\n"))
    refused = fsdp_launch(named, "finetune", tmp_path / "refused", roberta, tiny_data_dir)
    # no worker's traceback (the launcher's own ChildFailedError follows any worker that exits non-zero)
    assert refused.returncode != 0 and "[rank" not in refused.stderr, refused.stderr[-3000:]
    assert ("error: This launch's FSDP config wraps BertLayer (fsdp_transformer_layer_cls_to_wrap), which this "
            "RobertaForSequenceClassification does not have: its encoder blocks are RobertaLayer. Set "
            "`fsdp_transformer_layer_cls_to_wrap: RobertaLayer`" in refused.stderr), refused.stderr[-3000:]
    assert refused.stderr.count("This launch's FSDP config wraps") == 1
    assert not (tmp_path / "refused" / "results.json").exists()


def test_an_fsdp1_config_is_one_clear_refusal(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    result = fsdp_launch(fsdp_config(tmp_path, version=1), "finetune", out, tiny_model_dir, tiny_data_dir)
    assert result.returncode != 0
    assert "FSDP version 1" in result.stderr and "`fsdp_version: 2`" in result.stderr, result.stderr[-3000:]
    assert not (out / "results.json").exists()


def test_a_deepspeed_launch_is_one_clear_refusal_before_anything_is_written(tiny_run, monkeypatch, tmp_path):
    """ZeRO partitions the optimizer state across processes, which the checkpoints (the main process's state for
    all) would lose on resume: refused, naming the FSDP2 config, before the output folder is touched; once for a
    whole compare grid."""
    import xfer_nlp

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a DeepSpeed config
    with pytest.raises(xfer_nlp.ConfigError, match="asks for DeepSpeed") as refused:
        xfer_nlp.run(mode="finetune", **tiny_run)
    assert "recipes/accelerate_configs/fsdp.yaml" in str(refused.value)
    assert not (tmp_path / "out").exists()
    # A grid under such a launch stops at its first cell, with the same message, instead of failing every cell.
    grid = {**{k: v for k, v in tiny_run.items() if k != "seed"}, "output_dir": str(tmp_path / "grid")}
    with pytest.raises(xfer_nlp.ConfigError, match="asks for DeepSpeed"):
        xfer_nlp.compare(modes="probe,finetune", train_sizes="40,all", seeds="0", **grid)
    from xfer_nlp.runfolder import FAILED

    assert not list((tmp_path / "grid").rglob(FAILED)) and not (tmp_path / "grid" / "comparison.md").exists()


def test_more_processes_than_gpus_is_one_clear_refusal_before_anything_is_written(tiny_run, monkeypatch, tmp_path):
    """ddp.yaml says 8 processes: on a machine with 2 GPUs Accelerate puts four on each, which NCCL refuses.
    (No GPU here: torch is told it has 2; the check runs before anything touches one.)"""
    import torch

    import xfer_nlp

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # what torchrun sets in each process of an 8-process launch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(xfer_nlp.ConfigError, match=r"starts 8 processes on this machine, which has 2 GPU\(s\)") as e:
        xfer_nlp.run(mode="finetune", **tiny_run)
    assert "--num_processes 2" in str(e.value) and not (tmp_path / "out").exists()
    from xfer_nlp.api import _check_one_gpu_each

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # CPU processes on a GPU machine need no GPU each
    _check_one_gpu_each()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    _check_one_gpu_each()


def test_the_recipe_launch_gets_every_core_and_a_run_that_idles_cores_says_how_to_use_them(tmp_path, monkeypatch,
                                                                                          tiny_run):
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise: make sentiment tells it, and a run that is
    left with idle cores names the flag."""
    env = {k: v for k, v in launch_env().items() if k != "OMP_NUM_THREADS"}
    venv = Path(sys.prefix)
    dry = subprocess.run(["make", "-n", "-o", f"{venv}/.installed", "sentiment", f"VENV={venv}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    launch_flags = dry.split(" launch ", 1)[1].split(" recipes/sentiment.py")[0].split()
    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert launch_flags[launch_flags.index("--num_cpu_threads_per_process") + 1] == threads
    probe = tmp_path / "threads.py"
    probe.write_text("import torch\nprint('threads', torch.get_num_threads())\n")
    for flags, expected in ((launch_flags, threads), (["--num_processes", "1", "--num_machines", "1"], "1")):
        launched = subprocess.run([str(ACCELERATE), "launch", *flags, str(probe)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
        assert f"threads {expected}" in launched.stdout, launched.stderr[-2000:]  # the bare launch: accelerate's 1

    from xfer_nlp import precision

    monkeypatch.setattr(precision, "usable_cores", lambda: 4)
    monkeypatch.setattr(precision.torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    hint = precision.idle_cores_hint("cpu")
    assert "1 process(es) of 1 thread(s) each use 1 of this machine's 4 cores (OMP_NUM_THREADS=1)" in hint
    assert "--num_cpu_threads_per_process 4" in hint
    assert precision.idle_cores_hint("cuda") is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of a launch on this machine
    assert "--num_cpu_threads_per_process 2" in precision.idle_cores_hint("cpu")
    monkeypatch.setattr(precision.torch, "get_num_threads", lambda: 2)
    assert precision.idle_cores_hint("cpu") is None
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # one process of 2 threads on 4 cores: the run's log says so
    import xfer_nlp

    result = xfer_nlp.run(mode="probe", **tiny_run)
    assert "WARNING xfer_nlp: Threads: 1 process(es) of 2 thread(s) each use 2 of this machine's 4 cores" in \
        (result.output_dir / "train.log").read_text()
