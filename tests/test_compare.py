"""The comparison grid: variants, nested subsets, resumability, failures, the report and its plots."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import data_folder, free_port, launch_env, make_rows, write_jsonl

import xfer_nlp
from xfer_nlp.grid import CompareArgs, parse_variants, plan
from xfer_nlp.config import RunConfig
from xfer_nlp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
XFER = Path(sys.executable).parent / "xfer-nlp"


def grid_args(tiny_model_dir, tiny_data_dir, tmp_path):
    return dict(model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                per_device_train_batch_size=16, max_seq_length=32, feature_cache_dir=str(tmp_path / "features"),
                num_train_epochs=1, learning_rate=1e-3)


def test_variants_parse_with_their_settings():
    variants = parse_variants("probe,finetune,finetune[freeze_layers=4],"
                              "finetune[gradual_unfreezing=true,layer_lr_decay=0.8],lora")
    assert [v.label for v in variants] == ["probe", "finetune", "finetune[freeze_layers=4]",
                                           "finetune[gradual_unfreezing=true,layer_lr_decay=0.8]", "lora"]
    assert variants[2].overrides == {"freeze_layers": 4}
    assert variants[3].overrides == {"gradual_unfreezing": True, "layer_lr_decay": 0.8}
    assert variants[3].slug == "finetune-gradual_unfreezing_True-layer_lr_decay_0.8"


def test_grid_probes_encode_cold_so_their_train_time_counts_encoding(tmp_path):
    """A re-fit on cached features would read ~1 s in the textbook table where a first probe encodes every text."""
    args = CompareArgs("probe,probe[feature_cache_dir=/tmp/f],contrastive,finetune", "16", "0")
    cold = {c.variant.label: c.config.no_feature_cache for c in plan(RunConfig(), args, tmp_path)}
    assert cold == {"probe": True, "probe[feature_cache_dir=/tmp/f]": False, "contrastive": True, "finetune": False}
    reuse = plan(RunConfig(feature_cache_dir=str(tmp_path / "f")), CompareArgs("probe", "16", "0"), tmp_path)
    assert reuse[0].config.no_feature_cache is False  # asked to reuse features: the cache is read


def test_cells_that_keep_freed_memory_run_after_the_others(tmp_path):
    """glibc keeps the setting for the rest of the process, so a cell run after one with it would inherit it."""
    args = CompareArgs("finetune[keep_freed_memory=true],probe,lora", "16,32", "0")
    order = [(c.variant.label, c.size) for c in plan(RunConfig(), args, tmp_path)]
    assert order == [("probe", "16"), ("probe", "32"), ("lora", "16"), ("lora", "32"),
                     ("finetune[keep_freed_memory=true]", "16"), ("finetune[keep_freed_memory=true]", "32")]


def test_each_cell_is_named_in_the_trackers_by_its_grid_and_cell(tmp_path):
    """Every cell of every grid logs to the one 'xfer_nlp' project: the name tells them apart."""
    grid = tmp_path / "sst2-compare"
    names = [c.config.run_name for c in plan(RunConfig(run_name="mine"), CompareArgs("probe,lora", "16", "0,1"), grid)]
    assert names == ["sst2-compare/probe-n16-s0", "sst2-compare/probe-n16-s1", "sst2-compare/lora-n16-s0",
                     "sst2-compare/lora-n16-s1"]


@pytest.mark.parametrize("spec,message", [
    ("probe,finetune[freez_layers=4]", "'freez_layers' is not a run option (did you mean 'freeze_layers'?)"),
    ("finetune[seed=3]", "'seed' is set by the grid itself"),
    ("probe,fintune", "Unknown mode 'fintune' in --modes (did you mean 'finetune'?)"),
    ("finetune[freeze_layers=four]", "freeze_layers=four is not a number"),
    ("probe,probe", "lists a variant twice"),
    ("finetune[learning_rate=1e-4,learning_rate=2e-4]", "sets learning_rate twice"),  # one had silently won
])
def test_bad_variants_fail_naming_the_key(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_variants(spec)
    assert message in str(e.value)


def test_sizes_above_the_training_examples_are_left_out_by_default_and_refused_when_asked(
        tiny_model_dir, tiny_data_dir, tmp_path, tmp_path_factory):
    """Each such cell had failed in turn with the same message (the default 2,000 on polarity2k's 1,600
    training reviews, every seed and mode); so had every cell on data that cannot be read."""
    from xfer_nlp.errors import DataError
    from xfer_nlp.grid import _fit_sizes_to_data

    base = RunConfig(model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir))
    cells = plan(base, CompareArgs("probe,lora", CompareArgs.train_sizes, "0"), tmp_path / "grid")
    kept, said = _fit_sizes_to_data(cells, CompareArgs.train_sizes)
    assert [(c.variant.label, c.size) for c in kept] == [("probe", "100"), ("probe", "all"), ("lora", "100"),
                                                          ("lora", "all")]
    assert said == (f"Training-set size(s) 500,2000 left out of the default sizes: '{tiny_data_dir}' has 160 "
                    "training examples ('all' runs them all).")
    args = dict(model_name_or_path=str(tiny_model_dir), seeds="0", output_dir=tmp_path / "asked")
    with pytest.raises(ConfigError, match=rf"--train_sizes 500 is larger than the 160 training examples of "
                                          rf"'{tiny_data_dir}'\. Use sizes up to 160, or 'all'\."):
        xfer_nlp.compare(modes="probe", train_sizes="100,500", dataset_name=str(tiny_data_dir), **args)
    # a variant reading other data is read too, and the fewest training examples decide
    small = data_folder(tmp_path_factory, "small", train=make_rows(60, 1), validation=make_rows(20, 2))
    with pytest.raises(ConfigError, match=rf"--train_sizes 100 is larger than the 60 training examples of '{small}'"):
        xfer_nlp.compare(modes=f"probe,probe[dataset_name={small}]", train_sizes="100",
                         dataset_name=str(tiny_data_dir), **args)
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="has no rows"):
        xfer_nlp.compare(modes="probe", train_sizes="all", train_file=str(tmp_path / "header.csv"), **args)
    with pytest.raises(DataError, match=r"has a test split of its own; cross-validation \(--cv_folds; compare's "
                                        r"--folds\)"):  # each fold's cell had failed with it in turn
        xfer_nlp.compare(modes="probe", train_sizes="all", folds=2, dataset_name=str(tiny_data_dir), **args)
    with pytest.raises(ConfigError, match=rf"--train_sizes 1 is too few for probe on '{tiny_data_dir}': one example "
                                          "of each of its 2 classes make 2. Use sizes of at least 2."):
        xfer_nlp.compare(modes="probe", train_sizes="1,all", dataset_name=str(tiny_data_dir), **args)
    with pytest.raises(ConfigError, match=r"--train_sizes 3 is too few for contrastive\[pair_iterations=2\] on .*: two "
                                          "examples of each of its 2 classes make 4. Use sizes of at least 4."):
        xfer_nlp.compare(modes="probe,contrastive[pair_iterations=2]", train_sizes="3,all",
                         dataset_name=str(tiny_data_dir), **args)
    assert not (tmp_path / "asked").exists()  # refused before the grid's folder was made
    (tmp_path / "a-file").write_text("mine\n")  # had ended in FileExistsError's traceback
    with pytest.raises(ConfigError, match=r"--output_dir '.*a-file' is a file\. Pass a folder path\."):
        xfer_nlp.compare(modes="probe", train_sizes="all", dataset_name=str(tiny_data_dir),
                         **{**args, "output_dir": tmp_path / "a-file"})
    assert (tmp_path / "a-file").read_text() == "mine\n"


def test_a_setting_the_grid_makes_per_cell_is_refused_naming_the_grid_flag(tmp_path):
    # each would be replaced in every cell without a word: the grid's own seeds, sizes, names and pushes
    with pytest.raises(ConfigError) as e:
        xfer_nlp.compare(modes="probe", train_sizes="40", seeds="0", output_dir=tmp_path / "grid", seed=5,
                         max_train_samples=50, push_to_hub=True, overwrite_output_dir=True)
    message = str(e.value)
    for fix in ("--seed: each cell's seed comes from --seeds (e.g. --seeds 5)",
                "--max_train_samples: each cell's training-set size comes from --train_sizes (e.g. --train_sizes 50)",
                "--push_to_hub: push a finished cell with `xfer-nlp push OUTPUT_DIR/runs/CELL",
                "--overwrite_output_dir: compare keeps finished cells; to start over, delete the folder"):
        assert fix in message, message
    assert "--mode:" not in message and not (tmp_path / "grid").exists()


def test_invalid_cell_fails_before_any_cell_runs(tiny_model_dir, tiny_data_dir, tmp_path):
    with pytest.raises(ConfigError, match="--gradual_unfreezing does not apply to mode scratch"):
        xfer_nlp.compare(modes="probe,scratch[gradual_unfreezing=true]", train_sizes="40", seeds="0",
                         output_dir=tmp_path / "bad", **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    assert not (tmp_path / "bad" / "runs").exists()
    # a flag that suits some variants only is named with the way to give it to them alone
    with pytest.raises(ConfigError) as e:
        xfer_nlp.compare(modes="probe,finetune", train_sizes="40", seeds="0", output_dir=tmp_path / "bad",
                         max_steps=5, **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    assert "probe: " in str(e.value) and "finetune: " not in str(e.value)
    assert str(e.value).endswith("goes inside them, e.g. --modes 'probe,finetune[max_steps=100]'.")


def test_grid_runs_reports_and_skips_finished_cells(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "grid"
    kwargs = dict(modes="probe,finetune,finetune[freeze_layers=1]", train_sizes="40,all", seeds="0,1",
                  output_dir=out, **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    result = xfer_nlp.compare(**kwargs)
    assert result.ran == 12 and not result.failed
    assert result._repr_markdown_() == str(result) and "| variant | n |" in str(result)  # a notebook shows the table
    cells = pd.read_csv(out / "comparison.csv")
    assert len(cells) == 12 and set(cells.status) == {"done"}
    assert set(cells.train_samples) == {40, 160}
    # nested and shared: the same seed draws the same 40 examples for every mode
    picked = {}
    for folder in (out / "runs").iterdir():
        r = json.loads((folder / "results.json").read_text())
        assert r["config"]["max_train_samples"] in (40, None)
        picked.setdefault((r["config"]["seed"], r["config"]["max_train_samples"]), set()).add(r["train_samples"])
    frozen = cells[cells.label == "finetune[freeze_layers=1]"].trainable_params.iloc[0]
    assert cells[cells.label == "probe"].trainable_params.iloc[0] < frozen < \
        cells[cells.label == "finetune"].trainable_params.iloc[0]
    md = (out / "comparison.md").read_text()
    assert "## The textbook table, measured" in md and "Data needed (95% of own full-data accuracy)" in md
    assert "finetune[freeze_layers=1]" in md and "± " in md
    # what trained, in words, in the textbook table and in the frozen cell's card
    starts = next(line for line in md.splitlines() if line.startswith("| Starting point |")).strip("| ").split(" | ")
    assert starts[3] == "pretrained; encoder and head train (the embeddings and the bottom 1 encoder layer frozen)"
    frozen_card = (out / "runs" / "finetune-freeze_layers_1-n40-s0" / "README.md").read_text()
    assert ("in mode **finetune**: fine-tuning: the pretrained encoder and the head were trained. The embeddings and "
            "the bottom 1 encoder layer were kept frozen (`--freeze_layers 1`).") in frozen_card
    for plot in ("learning_curve.png", "accuracy_vs_time.png", "trainable_params.png"):
        assert (out / plot).stat().st_size > 10_000, plot
        assert f"![{plot}]({plot})" in md
    # each run's model card carries the comparison table
    card = (out / "runs" / "probe-n40-s0" / "README.md").read_text()
    assert "## Comparison" in card and "finetune[freeze_layers=1]" in card
    assert "Data: training on a seeded stratified subset of exactly 40 of " in card  # how its splits were made

    # --keep model (the default): a finished cell keeps its model, not the checkpoints only a resume needs
    finetuned = out / "runs" / "finetune-n40-s0"
    assert (finetuned / "model.safetensors").is_file() and not (finetuned / "checkpoints").exists()

    before = {f.name: (f / "results.json").stat().st_mtime_ns for f in (out / "runs").iterdir()}
    # a notebook's lists are the same grid (a list of modes had been read character by character)
    lists = dict(modes=["probe", "finetune", "finetune[freeze_layers=1]"], train_sizes=[40, "all"], seeds=[0, 1])
    again = xfer_nlp.compare(**{**kwargs, **lists})
    assert again.ran == 0 and again.skipped == 12
    assert before == {f.name: (f / "results.json").stat().st_mtime_ns for f in (out / "runs").iterdir()}


def test_a_failing_cell_is_reported_and_the_others_survive(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "grid"
    # an absurd learning rate makes the loss NaN: that cell stops with TrainingDiverged, the probe cell still runs
    result = xfer_nlp.compare(modes="finetune[learning_rate=1e12],probe", train_sizes="40", seeds="0",
                              output_dir=out, **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    name = "finetune-learning_rate_1000000000000.0-n40-s0"
    assert list(result.failed) == [name] and result.ran == 1
    assert "TrainingDiverged" in result.failed[name] and "Lower --learning_rate" in result.failed[name]
    assert (out / "runs" / "probe-n40-s0" / "results.json").is_file()
    assert "Traceback" in (out / "runs" / name / "failed.txt").read_text()
    md = (out / "comparison.md").read_text()
    assert f"{name}: failed" in md and "| probe |" in md


def test_a_second_compare_into_a_busy_grid_is_refused_and_touches_no_cell(tiny_model_dir, tiny_data_dir, tmp_path):
    """A second compare into the folder cleared the first's running cell as "started but left nothing to resume
    from", and wrote failed.txt beside the results of the cell it found locked."""
    out = tmp_path / "grid"
    running = out / "runs" / "probe-n40-s0"  # the first compare's cell, under way: its log, nothing to resume yet
    running.mkdir(parents=True)
    (running / "train.log").write_text("training...\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from xfer_nlp.runfolder import Lock; Lock(Path(sys.argv[1]), 'compare'); "
                               "print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    args = dict(modes="probe", train_sizes="40", seeds="0", output_dir=out,
                **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"'{out}' is in use by another compare \(pid {holder.pid}\)"):
            xfer_nlp.compare(**args)
        assert sorted(p.name for p in running.iterdir()) == ["train.log"]
        assert not (out / "compare.log").exists()
    finally:
        holder.kill()
        holder.wait()
    assert xfer_nlp.compare(**args).ran == 1  # the lock dies with its holder
    assert (running / "results.json").is_file()


def test_a_grid_whose_every_cell_failed_says_why(tiny_model_dir, tiny_data_dir, tmp_path):
    """It ended with the report's "No cell has finished yet; nothing to report", the reasons only in log lines."""
    with pytest.raises(xfer_nlp.XferError) as refused:  # an absurd learning rate: every cell's loss becomes NaN
        xfer_nlp.compare(modes="finetune", train_sizes="40", seeds="0,1", output_dir=tmp_path / "grid",
                         **{**grid_args(tiny_model_dir, tiny_data_dir, tmp_path), "learning_rate": 1e12})
    assert str(refused.value).startswith("Every cell failed, so there is nothing to report. finetune-n40-s0: "
                                         "TrainingDiverged: ")
    assert "; finetune-n40-s1: TrainingDiverged: " in str(refused.value)
    assert str(refused.value).endswith(f"(each cell's traceback: {tmp_path / 'grid' / 'runs' / '<cell>'}/failed.txt).")


def test_keep_says_what_a_finished_cell_leaves_on_disk(tiny_model_dir, tiny_data_dir, tmp_path):
    args = dict(modes="finetune", train_sizes="40", seeds="0", **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    xfer_nlp.compare(output_dir=tmp_path / "all", keep="all", **args)
    cell = tmp_path / "all" / "runs" / "finetune-n40-s0"
    assert (cell / "model.safetensors").is_file() and any((cell / "checkpoints").glob("checkpoint-*"))

    result = xfer_nlp.compare(output_dir=tmp_path / "results", keep="results", **args)
    cell = tmp_path / "results" / "runs" / "finetune-n40-s0"
    assert not list(cell.rglob("*.safetensors")) and not (cell / "checkpoints").exists()
    assert (cell / "results.json").is_file() and (cell / "README.md").is_file()
    assert "| finetune |" in result.summary  # the report needs nothing more
    again = xfer_nlp.compare(output_dir=tmp_path / "results", keep="results", **args)
    assert again.skipped == 1 and again.ran == 0  # a trimmed cell still counts as finished

    with pytest.raises(ConfigError, match="--keep must be one of all, model, results, got 'none'"):
        xfer_nlp.compare(output_dir=tmp_path / "bad", keep="none", **args)
    assert not (tmp_path / "bad").exists()


def test_report_reruns_without_training(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "grid"
    xfer_nlp.compare(modes="probe", train_sizes="40", seeds="0,1", output_dir=out,
                     **grid_args(tiny_model_dir, tiny_data_dir, tmp_path))
    (out / "comparison.md").unlink()
    moved = out / "runs" / "probe-n40-s1" / "results.json"  # as if this cell had run in a later session elsewhere
    moved.write_text(json.dumps({**json.loads(moved.read_text()), "hardware": "1 process(es) on Other CPU, 2 cores"}))
    cmd = subprocess.run([str(XFER), "report", str(out)], capture_output=True, text=True, timeout=300)
    assert cmd.returncode == 0, cmd.stderr
    assert (out / "comparison.md").is_file() and "probe" in cmd.stdout
    first = json.loads((out / "runs" / "probe-n40-s0" / "results.json").read_text())["hardware"]
    assert f"2 runs finished (1 on {first}; 1 on 1 process(es) on Other CPU, 2 cores)" in (
        out / "comparison.md").read_text()
    empty = subprocess.run([str(XFER), "report", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "Run xfer-nlp compare first" in empty.stderr
    from xfer_nlp.report import write_report

    with pytest.raises(xfer_nlp.XferError, match=r"'.*nowhere' is not a folder\. Pass the --output_dir of an xfer-nlp "
                                                 r"compare\."):  # had said it held no comparison cells
        write_report(tmp_path / "nowhere")


def test_every_variant_of_a_large_grid_is_drawn_apart_and_the_peer_dashed():
    from xfer_nlp.report import _dodge, _styles

    labels = [f"finetune[seed_variant={i}]" for i in range(14)] + ["setfit (peer)"]
    style = _styles(labels, peers={"setfit (peer)"})
    # tab10 alone repeats a colour from the eleventh variant on: colour and marker together stay apart
    assert len({(s["color"], s["marker"]) for s in style.values()}) == len(labels)
    assert style["setfit (peer)"]["linestyle"] == "--" and {s["linestyle"] for s in list(style.values())[:-1]} == {"-"}
    # points at one x spread evenly around it, as wide as asked, in the variants' order
    spread = [_dodge(i, 5, decades=0.4) for i in range(5)]
    assert spread == sorted(spread) and spread[2] == pytest.approx(1) and spread[-1] / spread[0] == pytest.approx(10 ** 0.4)
    assert _dodge(0, 1) == 1.0


def test_report_chooses_and_orders_variants(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "grid"
    args = grid_args(tiny_model_dir, tiny_data_dir, tmp_path)
    xfer_nlp.compare(modes="probe[probe_c_grid=1]", train_sizes="40", seeds="0", output_dir=out, **args)
    xfer_nlp.compare(modes="probe", train_sizes="40", seeds="0", output_dir=out, **args)  # a second run, same folder
    # compare's own report covers the whole folder, this call's variants first
    assert (out / "comparison.md").read_text().startswith("# Comparison: probe, probe[probe_c_grid=1]\n")
    cmd = subprocess.run([str(XFER), "report", str(out), "--modes", "probe[probe_c_grid=1],probe"],
                         capture_output=True, text=True, timeout=300)
    assert cmd.returncode == 0, cmd.stderr
    md = (out / "comparison.md").read_text()
    assert md.startswith("# Comparison: probe[probe_c_grid=1], probe\n")
    assert md.index("| probe[probe_c_grid=1] | 40 |") < md.index("| probe | 40 |")
    only = subprocess.run([str(XFER), "report", str(out), "--modes", "probe[probe_c_grid=1]"],
                          capture_output=True, text=True, timeout=300)
    assert only.returncode == 0 and "| probe | 40 |" not in (out / "comparison.md").read_text()
    wrong = subprocess.run([str(XFER), "report", str(out), "--modes", "probe,lora"], capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 2 and "variant(s) lora" in wrong.stderr and "probe[probe_c_grid=1]" in wrong.stderr


def test_killed_grid_resumes_the_interrupted_cell(tiny_model_dir, bigger_data, tmp_path):
    """SIGKILL mid-cell; the rerun skips the finished cell and resumes the interrupted one from its checkpoint."""
    out = tmp_path / "grid"
    cmd = [str(XFER), "compare", "--modes", "probe,finetune", "--train_sizes", "all", "--seeds", "0",
           "--output_dir", str(out), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(bigger_data),
           "--max_seq_length", "32", "--num_train_epochs", "2", "--learning_rate", "1e-3", "--save_steps", "10",
           "--feature_cache_dir", str(tmp_path / "f")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    target = out / "runs" / "finetune-nall-s0" / "checkpoints" / "checkpoint-20"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (out / "runs" / "finetune-nall-s0" / "results.json").exists()
    probe_done = (out / "runs" / "probe-nall-s0" / "results.json").stat().st_mtime_ns
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming)" in resumed.stderr and "Resumed from" in resumed.stderr
    assert (out / "runs" / "probe-nall-s0" / "results.json").stat().st_mtime_ns == probe_done
    assert "1 cells run, 1 already done" in resumed.stdout


def test_sigterm_stops_the_whole_grid_and_the_rerun_resumes_its_cell(tiny_model_dir, bigger_data, tmp_path):
    """SIGTERM (or Ctrl-C) mid-cell stops the grid with one message, not just that cell: the next cell never starts."""
    out = tmp_path / "grid"
    cmd = [str(XFER), "compare", "--modes", "finetune", "--train_sizes", "all", "--seeds", "0,1",
           "--output_dir", str(out), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(bigger_data),
           "--max_seq_length", "32", "--num_train_epochs", "12", "--save_steps", "10", "--min_train_steps", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = out / "runs" / "finetune-nall-s0"
    deadline = time.time() + 300
    while not any((first / "checkpoints").glob("checkpoint-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the grid ended before any checkpoint was seen; nothing was interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "error: The grid was interrupted in cell finetune-nall-s0, at step" in stderr
    assert "resumes from its last checkpoint" in stderr
    assert not (out / "runs" / "finetune-nall-s1").exists()  # the grid stopped; before, it went on to this cell
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming)" in resumed.stderr and "2 cells run, 0 already done" in resumed.stdout


@pytest.fixture
def bigger_data(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", make_rows(800, 21))
    write_jsonl(tmp_path / "data" / "validation.jsonl", make_rows(64, 22))
    return tmp_path / "data"


def test_compare_command_line_help_and_mistakes():
    helped = subprocess.run([str(XFER), "compare", "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0
    for flag in ("--modes", "--train_sizes", "--seeds", "--folds", "--keep", "--gradual_unfreezing", "--freeze_layers"):
        assert flag in helped.stdout
    # its own name and purpose, the grid's flags before the run options, and none of the flags it refuses
    assert helped.stdout.startswith("usage: xfer-nlp compare") and "report which approach wins" in helped.stdout
    assert helped.stdout.index("--train_sizes") < helped.stdout.index("--model_name_or_path")
    assert not any(f"{flag} " in helped.stdout for flag in ("--seed", "--mode", "--max_train_samples", "--push_to_hub"))
    wrong = subprocess.run([str(XFER), "compare", "--mode", "probe"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "compare takes --modes" in wrong.stderr
    typo = subprocess.run([str(XFER), "compare", "--train_size", "100"], capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and "did you mean 'train_sizes'" in typo.stderr


def test_grid_under_two_process_ddp(tiny_model_dir, tiny_data_dir, tmp_path):
    """The whole grid under a real 2-process launch: every cell trains on both ranks, one report is written."""
    out = tmp_path / "grid"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           str(XFER), "compare", "--modes", "probe,finetune[freeze_layers=1]", "--train_sizes", "40,all",
           "--seeds", "0", "--output_dir", str(out), "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(tiny_data_dir), "--max_seq_length", "32", "--num_train_epochs", "1",
           "--learning_rate", "1e-3", "--per_device_train_batch_size", "8", "--feature_cache_dir", str(tmp_path / "f")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=launch_env())
    assert result.returncode == 0, result.stderr[-3000:]
    cells = pd.read_csv(out / "comparison.csv")
    assert len(cells) == 4 and set(cells.status) == {"done"}
    for folder in (out / "runs").iterdir():
        assert json.loads((folder / "results.json").read_text())["num_processes"] == 2
    assert result.stdout.count("cells run") == 1  # one voice


def test_cross_validated_grid_runs_each_fold_as_the_test_split(tiny_model_dir, tmp_path_factory, tmp_path):
    rows = [{"text": f"{r['text']} number {i}", "label": r["label"]} for i, r in enumerate(make_rows(150, 9))]
    data = data_folder(tmp_path_factory, "no-test-split", train=rows)  # one file: no validation, no test
    out = tmp_path / "cv"
    result = subprocess.run([str(XFER), "compare", "--modes", "probe", "--train_sizes", "all", "--seeds", "0",
                             "--folds", "3", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data),
                             "--max_seq_length", "32", "--output_dir", str(out)],
                            capture_output=True, text=True, timeout=600, env=launch_env())
    assert result.returncode == 0, result.stderr[-3000:]
    tested = []
    for fold in range(3):
        run = json.loads((out / "runs" / f"probe-nall-s0-f{fold}" / "results.json").read_text())
        assert (run["config"]["cv_folds"], run["config"]["cv_fold"]) == (3, fold)
        tested.append(sum(c["support"] for c in run["metrics"]["test"]["per_class"].values()))
    assert tested == [50, 50, 50]  # every row tested once over the folds
    md = (out / "comparison.md").read_text()
    assert "| probe | all | 3 |" in md and "runs (seeds x folds)" in md and "cross-validation folds" in md
    with pytest.raises(ConfigError, match="--folds must be at least 2"):
        plan(RunConfig(), CompareArgs("probe", "16", "0", folds=1), tmp_path)
    with pytest.raises(ConfigError, match="Pass --folds .* or --cv_folds with --cv_fold .*, not both"):
        plan(RunConfig(cv_folds=5), CompareArgs("probe", "16", "0", folds=5), tmp_path)


def test_a_cell_that_cannot_resume_says_how_to_train_it_afresh(tiny_model_dir, tiny_data_dir, tmp_path, caplog):
    """A killed cell whose data changed before the rerun was refused with a run's advice ("start a new run in
    another --output_dir"), which a grid's cell cannot take, at every rerun."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    out = tmp_path / "grid"
    args = {**grid_args(tiny_model_dir, data, tmp_path), "save_steps": 2}
    xfer_nlp.compare(modes="finetune", train_sizes="40", seeds="0", output_dir=out, keep="all", **args)
    cell = out / "runs" / "finetune-n40-s0"
    (cell / "results.json").unlink()  # as a kill after the last checkpoint leaves it
    write_jsonl(data / "train.jsonl", [{**r, "text": r["text"] + " film"} for r in make_rows(160, 1)])  # edited
    with pytest.raises(xfer_nlp.errors.XferError):  # the grid's one cell failed: nothing to report
        xfer_nlp.compare(modes="finetune", train_sizes="40", seeds="0", output_dir=out, keep="all", **args)
    said = (cell / "failed.txt").read_text()
    assert "Cannot resume: the train rows differ" in said
    assert said.endswith(f"For this cell: to train it afresh on the data as it is now, delete {cell} and run the "
                         "same compare command again.")
    shutil.rmtree(cell)  # as it says
    result = xfer_nlp.compare(modes="finetune", train_sizes="40", seeds="0", output_dir=out, keep="all", **args)
    assert (cell / "results.json").is_file() and result is not None
