"""Trust, round 2: what a new user or an attacker tries, through the real entry points, with the exact outcome.

The planted-pickle resume and the non-finite checkpoint are in test_resume.py; the unknown architecture in
test_families.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import launch_env, make_rows, write_jsonl
from hub_server import TOKEN, HubServer
from safetensors.torch import load_file, save_file

import xfer_nlp
from xfer_nlp import runfolder

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "xfer_nlp.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env or launch_env(), timeout=timeout)


def refused(result, *words):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in result.stderr, (w, result.stderr[-2000:])


def tiny_cli_run(tiny_model_dir, tiny_data_dir, out, *extra):
    return ("run", "--mode", "probe", "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", out, "--max_seq_length", "32", *extra)


# --- Security -----------------------------------------------------------------------------------------------------

def test_push_uploads_the_runs_files_only_never_the_data_beside_them(tiny_model_dir, tiny_data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in tiny_data_dir.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    # the run writes into the data folder itself, its feature cache below it
    xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(data), output_dir=str(data),
                 overwrite_output_dir=True, feature_cache_dir=str(data / "cache"), max_seq_length=32)
    with HubServer() as hub:
        env = {**launch_env(), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN,
               "HF_HOME": str(tmp_path / "hf")}
        result = cli("push", data, "--hub_model_id", "tester/data-run", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        files = set(hub.state.repos["tester/data-run"]["files"])
    assert {"model.safetensors", "config.json", "results.json", "README.md", "tokenizer.json"} <= files
    assert not files & {"train.jsonl", "validation.jsonl", "test.jsonl", "train.log", runfolder.LOCK}
    assert not any(f.startswith("cache") for f in files)
    card = hub.state.repos["tester/data-run"]["files"]["README.md"].decode()
    assert 'model="tester/data-run"' in card  # the snippet names the id it was pushed to
    assert 'model="tester/data-run"' not in (data / "README.md").read_text()  # the local card is untouched


def test_hub_token_help_warns_that_ps_shows_it():
    result = subprocess.run([sys.executable, "recipes/sentiment.py", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0
    assert "visible to every user" in " ".join(result.stdout.split()) and "$HF_TOKEN" in result.stdout


# --- Losses -------------------------------------------------------------------------------------------------------

def test_a_folder_that_is_not_a_run_is_refused_then_only_written_into(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "keep.txt").write_text("keep me")
    refused(cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, out)), "is not empty and holds no xfer_nlp run",
            "--overwrite_output_dir")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "keep.txt"]
    assert (out / "README.md").read_text() == "my notes"
    done = cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, out, "--overwrite_output_dir"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "keep.txt").read_text() == "keep me" and (out / "results.json").is_file()


def test_an_empty_output_dir_is_refused(tiny_model_dir, tiny_data_dir):
    refused(cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, "")), "--output_dir is empty")


def test_overwrite_invalidates_the_old_results_before_writing(tiny_run, monkeypatch):
    xfer_nlp.run(mode="probe", **tiny_run)
    out = Path(tiny_run["output_dir"])
    assert json.loads((out / "results.json").read_text())["mode"] == "probe"
    from xfer_nlp import hub

    def killed_during_export(output_dir, model, tokenizer, results):
        model.save_pretrained(output_dir)  # the new model is on disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "save_outputs", killed_during_export)
    with pytest.raises(KeyboardInterrupt):
        xfer_nlp.run(mode="finetune", num_train_epochs=1, overwrite_output_dir=True, **tiny_run)
    assert not (out / "results.json").exists(), "a results.json that describes the old probe beside the new model"


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from xfer_nlp.runfolder import Lock; Lock(Path(sys.argv[1])); print('held', flush=True);"
                               " time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, out)), "is in use by another run",
                f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    again = cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, out))  # the lock dies with its holder
    assert again.returncode == 0, again.stderr[-2000:]


# --- Silently wrong -----------------------------------------------------------------------------------------------

def test_resuming_a_one_process_checkpoint_with_two_is_refused(tiny_model_dir, tiny_data_dir, tmp_path):
    from test_distributed import ACCELERATE
    from conftest import free_port

    out = tmp_path / "run"
    xfer_nlp.run(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                 output_dir=str(out), max_seq_length=32, per_device_train_batch_size=16, num_train_epochs=2,
                 save_steps=4, seed=0)
    (out / "results.json").unlink()
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           "recipes/sentiment.py", "--mode", "finetune", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(tiny_data_dir), "--output_dir", str(out), "--max_seq_length", "32",
           "--per_device_train_batch_size", "16", "--num_train_epochs", "2", "--save_steps", "4", "--seed", "0",
           "--resume_from_checkpoint", "latest"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=launch_env(), timeout=600)
    assert result.returncode != 0
    assert "num_processes: checkpoint 1, now 2" in result.stderr
    assert "effective_batch_size: checkpoint 16, now 32" in result.stderr
    assert not (out / "results.json").exists()


def many_classes(n_classes, per_class):
    return [{"text": f"class {c} example {i} film", "label": f"c{c:03d}"} for c in range(n_classes)
            for i in range(per_class)]


def test_a_subset_smaller_than_the_classes_is_an_error_else_exact(tiny_model_dir, tmp_path):
    data = tmp_path / "many"
    write_jsonl(data / "train.jsonl", many_classes(30, 5))
    write_jsonl(data / "validation.jsonl", many_classes(30, 1))
    kw = dict(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(data), max_seq_length=32,
              feature_cache_dir=str(tmp_path / "f"))
    with pytest.raises(xfer_nlp.DataError, match="--max_train_samples 20 is fewer than the 30 classes"):
        xfer_nlp.run(output_dir=str(tmp_path / "a"), max_train_samples=20, **kw)
    result = xfer_nlp.run(output_dir=str(tmp_path / "b"), max_train_samples=41, **kw)
    assert result.results["train_samples"] == 41
    assert "exactly 41 of 150" in " ".join(result.results["data_notes"])
    write_jsonl(tmp_path / "one.jsonl", many_classes(30, 6))  # no validation file: 10% of 180 is 18 < 30
    with pytest.raises(xfer_nlp.DataError, match="validation hold-out \\(18\\) to hold each of the 30 classes"):
        xfer_nlp.run(**{**kw, "dataset_name": str(tmp_path / "one.jsonl"), "output_dir": str(tmp_path / "c")})


def metadata(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return f.metadata()


def test_probe_cache_files_are_checked_before_they_are_trusted(tiny_run):
    first = xfer_nlp.run(mode="probe", **tiny_run)
    cache = Path(tiny_run["feature_cache_dir"])
    files = {load_file(p)["features"].shape[0]: p for p in cache.rglob("*.safetensors")}
    train, validation = files[160], files[48]
    original = {k: v.clone() for k, v in load_file(validation).items()}
    validation_meta, train_meta = metadata(validation), metadata(train)
    validation.write_bytes(train.read_bytes())  # another split's file under validation's key
    flipped = {k: v.clone() for k, v in load_file(train).items()}
    save_file({"features": flipped["features"], "labels": 1 - flipped["labels"]}, train,
              metadata=train_meta)  # its labels flipped, its metadata kept
    again = xfer_nlp.run(mode="probe", **{**tiny_run, "output_dir": tiny_run["output_dir"] + "2"})
    log = (again.output_dir / "train.log").read_text()
    assert log.count("does not match this data") == 2 and "its labels differ" in log
    assert again.results["probe"]["feature_cache_hit"] == {"train": False, "validation": False, "test": True}
    assert again.metrics == first.metrics
    rewritten = load_file(validation)  # re-encoded and rewritten
    assert torch.equal(rewritten["labels"], original["labels"])
    assert torch.allclose(rewritten["features"], original["features"], atol=1e-5), \
        (rewritten["features"] - original["features"]).abs().max()
    torch.manual_seed(0)
    save_file({"features": torch.randn(48, 7), "labels": original["labels"]}, validation,
              metadata={**validation_meta, "width": "7"})  # a width this head cannot read
    third = xfer_nlp.run(mode="probe", **{**tiny_run, "output_dir": tiny_run["output_dir"] + "3"})
    assert "its width is '7', expected '32'" in (third.output_dir / "train.log").read_text()
    assert third.metrics == first.metrics


def test_padded_label_strings_are_one_class_and_case_twins_warned(tiny_model_dir, tmp_path):
    rows = [{"text": f"{w} film", "label": lab} for w, lab in
            [("good", "pos"), ("great", "pos "), ("bad", "neg"), ("awful", " neg"), ("dull", "Neg")] * 8]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "validation.jsonl", rows[:10])
    result = xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(tmp_path / "d"),
                          output_dir=str(tmp_path / "o"), max_seq_length=32, feature_cache_dir=str(tmp_path / "f"))
    log = (result.output_dir / "train.log").read_text()
    assert result.results["label_names"] == ["Neg", "neg", "pos"]
    assert "Stripped surrounding whitespace from 20 string label(s)" in log
    assert "'Neg' and 'neg' differ only in case" in log


@pytest.mark.parametrize("value,kind", [([["a", "b"]], "lists"), ({"a": "b"}, "nested records")])
def test_a_text_column_of_lists_or_records_is_refused(value, kind, tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": value if isinstance(value, dict) else value[0], "label": i % 2}
                                        for i in range(20)])
    result = cli("run", "--mode", "probe", "--model_name_or_path", tiny_model_dir, "--dataset_name",
                 tmp_path / "d.jsonl", "--output_dir", tmp_path / "o")
    refused(result, "text column 'text'", kind, "not strings")


def test_predict_takes_one_string_as_one_text_and_names_a_none(tiny_run):
    out = xfer_nlp.run(mode="probe", **tiny_run).output_dir
    rows = xfer_nlp.predict(out, "a good film")
    assert len(rows) == 1 and rows[0]["text"] == "a good film"
    with pytest.raises(xfer_nlp.XferError, match=r"Text 1 of 3 \(counting from 0\) is None"):
        xfer_nlp.predict(out, ["good", None, "bad"])
    with pytest.raises(xfer_nlp.XferError, match=r"a list of strings \(or of text pairs\), not int \(123\)"):
        xfer_nlp.predict(out, 123)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_invalid_configuration(value, tiny_model_dir, tiny_data_dir, tmp_path):
    result = cli("run", "--mode", "finetune", "--model_name_or_path", tiny_model_dir, "--dataset_name",
                 tiny_data_dir, "--output_dir", tmp_path / "o", f"--learning_rate={value}")
    refused(result, f"--learning_rate must be a finite number, got {float(value)}")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --- Ordinary mistakes: one message, exit 2 ----------------------------------------------------------------------

def test_max_seq_length_beyond_the_positions_is_named(tiny_model_dir, tiny_data_dir, tmp_path):
    refused(cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, tmp_path / "o"), "--max_seq_length", "512"),
            "--max_seq_length 512 is beyond", "cover 128 tokens")


def test_an_unwritable_output_dir_is_named(tiny_model_dir, tiny_data_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    refused(cli(*tiny_cli_run(tiny_model_dir, tiny_data_dir, tmp_path / "a-file" / "out")), "cannot be written")


def test_a_symlink_loop_in_the_data_folder_is_named(tiny_model_dir, tmp_path):
    data = tmp_path / "loop"
    data.mkdir()
    os.symlink("train.jsonl", data / "train.jsonl")
    refused(cli(*tiny_cli_run(tiny_model_dir, data, tmp_path / "o")), "symbolic link that leads nowhere")


def test_a_damaged_pooling_config_in_the_model_folder_is_named(tiny_run, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "1_Pooling" / "config.json").write_text('["mean"]')
    with pytest.raises(xfer_nlp.ConfigError, match=r"1_Pooling/config.json' .* is damaged.*pass --pooling"):
        xfer_nlp.run(mode="probe", **{**tiny_run, "model_name_or_path": str(model)})
    assert xfer_nlp.run(mode="probe", pooling="mean", **{**tiny_run, "model_name_or_path": str(model)}).metrics


@pytest.mark.parametrize("id2label,said", [
    ({"0": "neg", "5": "pos"}, r"names the class ids 0, 5, where its 2 classes are 0 to 1 \(a damaged or hand-edited"),
    ({"0": "neg", "1": "neg"}, r"names classes 0 and 1 alike \('neg'\): predictions of the two could not be told"),
])
def test_a_classifier_whose_id2label_is_damaged_is_named_by_every_reader(id2label, said, tiny_run, tmp_path):
    """predict ended in `KeyError: 1`, and labelled both classes' predictions 'neg'; evaluate and a run that keeps the
    head read the same id2label."""
    run = xfer_nlp.run(mode="finetune", max_steps=2, **tiny_run).output_dir
    model = tmp_path / "edited"
    shutil.copytree(run, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "id2label": id2label}))
    for read in (lambda: xfer_nlp.predict(model, ["a good film"]),
                 lambda: xfer_nlp.evaluate(model, dataset_name=tiny_run["dataset_name"],
                                           output_dir=str(tmp_path / "scored")),
                 lambda: xfer_nlp.run(mode="finetune", head_init="keep", max_steps=2,
                                      **{**tiny_run, "model_name_or_path": str(model),
                                         "output_dir": str(tmp_path / "kept")})):
        with pytest.raises(xfer_nlp.ConfigError, match=rf"'{re.escape(str(model))}' has a config.json whose id2label "
                                                       rf"{said}"):
            read()
    assert xfer_nlp.predict(run, ["a good film"])[0]["label"] in ("0", "1")  # the run's own export reads as before


def test_a_weights_file_cut_short_is_named_by_every_reader(tiny_run, tiny_model_dir, tmp_path):
    """A copy or download of model.safetensors that stopped half-way ended in safetensors' SafetensorError traceback
    ("incomplete metadata, file not fully covered")."""
    run = xfer_nlp.run(mode="finetune", max_steps=2, **tiny_run).output_dir
    for source in (run, tiny_model_dir):
        cut = tmp_path / f"cut-{source.name}"
        shutil.copytree(source, cut)
        whole = (cut / "model.safetensors").read_bytes()
        (cut / "model.safetensors").write_bytes(whole[: len(whole) // 2])
        said = rf"The weights file of '{re.escape(str(cut))}' is damaged \(.*\): a copy or download cut short\?"
        readers = [lambda: xfer_nlp.run(mode="finetune", max_steps=1, **{**tiny_run, "model_name_or_path": str(cut),
                                                                           "output_dir": str(tmp_path / "a")}),
                   lambda: xfer_nlp.run(mode="probe", pooling="mean", **{**tiny_run, "model_name_or_path": str(cut),
                                                                           "output_dir": str(tmp_path / "b")})]
        if source == run:  # a classifier: also what predict and evaluate load
            readers.append(lambda: xfer_nlp.predict(cut, ["a good film"]))
        for read in readers:
            with pytest.raises(xfer_nlp.ConfigError, match=said):
                read()


def test_predict_on_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes").mkdir()
    refused(cli("predict", "--model", tmp_path / "notes", "a film"), "is a folder but not a model")


def test_predict_on_a_hub_id_while_offline():
    refused(cli("predict", "--model", "nobody/no-such-model-xfer", "a film",
                env={**launch_env(), "HF_HUB_OFFLINE": "1"}), "Could not load the model", "offline")


def test_predict_output_into_a_missing_folder_creates_it(tiny_run, tmp_path):
    out = xfer_nlp.run(mode="probe", **tiny_run).output_dir
    target = tmp_path / "new" / "deeper" / "p.jsonl"
    result = cli("predict", "--model", out, "--output", target, "a good film", "a bad film")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(target.read_text().splitlines()) == 2


def test_report_counts_a_truncated_results_json_as_failed_and_compare_runs_it_again(tiny_run, tmp_path):
    grid = tmp_path / "grid"
    args = dict(modes="probe", train_sizes="40,all", seeds="0", output_dir=str(grid),
                **{k: v for k, v in tiny_run.items() if k not in ("output_dir", "seed")})
    xfer_nlp.compare(**args)
    damaged = grid / "runs" / "probe-n40-s0" / "results.json"
    whole = damaged.read_text()
    damaged.write_text(whole[:50])
    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "report", str(grid)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert str(damaged) in result.stderr and "counts as failed" in result.stderr
    assert "run the compare command again, which runs the cell afresh" in result.stderr
    rows = (grid / "comparison.csv").read_text()
    assert "probe-n40-s0,failed" in rows and "probe-nall-s0,done" in rows
    assert "min wall-clock" in (grid / "comparison.md").read_text()
    # compare had counted the cell as done (skipped) while its report counted it failed: it runs it again
    again = xfer_nlp.compare(**args)
    assert (again.ran, again.skipped) == (1, 1)
    assert "Cell probe-n40-s0: its results.json is damaged, so the cell runs afresh." in (
        grid / "compare.log").read_text()
    assert json.loads(damaged.read_text())["metrics"] == json.loads(whole)["metrics"]
    # the bookkeeping beside it: a cell.json that is not compare's, a grid.json cut short
    (grid / "runs" / "probe-n40-s0" / "cell.json").write_text('{"label": "probe", "seed": "0"}')
    (grid / "grid.json").write_text('{"wall_sec')
    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "report", str(grid)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "probe-n40-s0 is left out of the report: its cell.json is damaged" in result.stderr
    assert "grid.json' is damaged" in result.stderr and "min wall-clock" not in (grid / "comparison.md").read_text()
    rows = (grid / "comparison.csv").read_text()
    assert "probe-n40-s0" not in rows and "probe-nall-s0,done" in rows


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_is_one_line_with_the_resume_command(stop, tiny_model_dir, tmp_path):
    data = tmp_path / "big"
    write_jsonl(data / "train.jsonl", make_rows(3000, 5))
    write_jsonl(data / "validation.jsonl", make_rows(64, 6))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "finetune",
                             "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data),
                             "--output_dir", str(out), "--max_seq_length", "32", "--per_device_train_batch_size", "8",
                             "--num_train_epochs", "3", "--save_steps", "20"], cwd=ROOT, env=launch_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and
                            # Python then never raises KeyboardInterrupt; the user's terminal run has it on.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    # Any checkpoint: the tiny model runs ~100 steps a second, and save_total_limit 2 rotates each one away about
    # 0.4 s after it appears, so waiting for one named checkpoint could miss it and outwait the whole run.
    while not any((out / "checkpoints").glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before any checkpoint was seen; nothing was interrupted"
    proc.send_signal(stop)  # SIGTERM: a scheduler's preemption, `timeout`, `kill`; Python would die without a word
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "error: Interrupted at step" in stderr and "--resume_from_checkpoint latest" in stderr
    assert "the last checkpoint is checkpoint-" in stderr


def test_jsonl_with_a_byte_order_mark_is_read(tiny_model_dir, tmp_path):
    rows = make_rows(40, 9)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    result = xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(path),
                          output_dir=str(tmp_path / "o"), max_seq_length=32, feature_cache_dir=str(tmp_path / "f"))
    assert sum(result.results["split_sizes"].values()) == 40


def test_resume_with_the_folder_spelled_another_way(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = dict(mode="finetune", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
              max_seq_length=32, per_device_train_batch_size=16, num_train_epochs=2, save_steps=4, seed=0)
    xfer_nlp.run(output_dir="rel/run", **kw)
    (tmp_path / "rel" / "run" / "results.json").unlink()
    result = xfer_nlp.run(output_dir=str(tmp_path / "rel" / "run"), resume_from_checkpoint="latest", **kw)
    assert result.results["history"][-1]["epoch"] == 2


def test_a_user_error_in_a_two_process_launch_prints_its_message_once(tiny_model_dir, tmp_path):
    """The message comes once, from rank 0. Accelerate's launcher then re-raises torchrun's ChildFailedError
    (accelerate/commands/launch.py, multi_gpu_launcher), whose dump xfer_nlp cannot suppress."""
    from conftest import free_port
    from test_distributed import ACCELERATE

    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           "recipes/sentiment.py", "--mode", "probe", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=launch_env(), timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("error: Data path") == 1, result.stderr[-3000:]


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    """Every file xfer_nlp replaces (results.json, predictions, plots, best weights, feature caches) goes through
    runfolder.atomic_write: a write that dies midway leaves the previous file whole and no temporary behind."""
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with runfolder.atomic_write(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with runfolder.atomic_write(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_one_place_decides_what_state_a_folder_is_in(tmp_path):
    def folder(*files):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("")
        out.mkdir(exist_ok=True)
        return out

    assert runfolder.state(tmp_path / "nothing") == "missing"
    assert runfolder.state(folder("train.log", "cell.json")) == "empty"
    assert runfolder.state(folder("cell.json", "failed.txt", "train.log")) == "failed"
    assert runfolder.state(folder("failed.txt", "checkpoints/checkpoint-10/model.safetensors")) == "interrupted"
    assert runfolder.state(folder("model.safetensors", "results.json")) == "finished"
    assert runfolder.state(folder("evaluation.json", "predictions.jsonl")) == "finished"
    assert runfolder.state(folder("notes.txt")) == "foreign"
    runfolder.check(folder("cell.json", "failed.txt"), overwrite=False, resume=False)  # a failed cell starts over


def test_results_json_is_read_against_its_schema(tiny_run):
    """results.json is a RunRecord: report, compare, push and the card read it through read_results, which names
    what is missing, unknown or of the wrong kind instead of failing later on a KeyError or a sum over text."""
    result = xfer_nlp.run(mode="probe", **tiny_run)
    record = runfolder.read_results(result.output_dir)
    assert record == result.record and record.to_dict() == json.loads((result.output_dir / "results.json").read_text())
    data = record.to_dict()
    for broken, named in (({k: v for k, v in data.items() if k != "metrics"}, "missing metrics"),
                          ({**data, "accuracy": 0.99}, "unknown accuracy"),
                          ({**data, "train_seconds": "fast", "stopped_early": 1}, "not of its kind: train_seconds, "
                                                                                  "stopped_early"),
                          ({**data, "metrics": {"validation": {**data["metrics"]["validation"], "accuracy": "0.9"}}},
                           r"not of its kind: metrics\.validation\.accuracy"),
                          ({**data, "metrics": {"validation": [0.9]}}, "not of its kind: metrics")):
        (result.output_dir / "results.json").write_text(json.dumps(broken))
        with pytest.raises(xfer_nlp.XferError, match=named):
            runfolder.read_results(result.output_dir)
    # numbers as JSON writes them: 2.0 comes back as 2, and None where the schema allows it
    assert runfolder.RunRecord.from_dict({**data, "train_seconds": 2, "best_step": None}).train_seconds == 2


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_loading_never_fetches_hub_kernels(pooling, tiny_run, monkeypatch):
    """transformers 5 swaps layers for kernels downloaded from the Hub (code run on the GPU) unless told not to:
    every model xfer_nlp loads, for training and for predict, is loaded with use_kernels=False."""
    from transformers import PreTrainedModel

    asked = []
    real = PreTrainedModel.set_use_kernels

    def spy(self, use_kernels, *args, **kwargs):
        asked.append(use_kernels)
        return real(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", spy)
    result = xfer_nlp.run(mode="finetune", pooling=pooling, num_train_epochs=1, **tiny_run)
    xfer_nlp.predict(result.output_dir, ["a good film"])
    assert len(asked) >= 2 and not any(asked)


def test_every_file_a_run_writes_has_the_mode_open_gives_it(tiny_run, tmp_path):
    """safetensors 0.8 writes owner-only files (0600): a model saved by one user, or by root in a Docker image,
    was unreadable to another. Under a group's umask (002) every file written (export, LoRA adapter, checkpoint,
    kept best weights, feature cache) is 0664, as open() makes config.json."""
    import xfer_nlp

    mask = os.umask(0o002)
    try:
        xfer_nlp.run(**dict(tiny_run, mode="lora", num_train_epochs=2, save_steps=5, save_lora_adapter=True,
                            output_dir=str(tmp_path / "lora")))
        xfer_nlp.run(**dict(tiny_run, mode="probe", output_dir=str(tmp_path / "probe")))
    finally:
        os.umask(mask)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    weights = {p.relative_to(tmp_path).parts[0] + "/" + p.name for p in files if p.suffix == ".safetensors"}
    assert {"lora/model.safetensors", "lora/adapter_model.safetensors", "features/" + next(
        p.name for p in files if p.parent.name != "lora" and p.name.startswith("texts-"))} <= weights
    assert any(p.name.startswith("rng-rank") for p in files) and any(p.name == "best.safetensors" for p in files), \
        sorted(weights)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o664"}, \
        sorted((oct(p.stat().st_mode & 0o777), str(p.relative_to(tmp_path))) for p in files)
