"""The step budget: --max_steps, the small-data rule, --eval_steps and early stopping, through xfer_nlp.run."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import launch_env

import xfer_nlp

ROOT = Path(__file__).resolve().parents[1]


def test_the_small_data_rule_raises_the_epochs_and_logs_the_step_count(tiny_run):
    # 160 examples at batch 16: 10 steps an epoch, so the default 3 epochs are 30 steps, below the asked 60
    result = xfer_nlp.run(mode="finetune", **{**tiny_run, "min_train_steps": 60})
    log = (result.output_dir / "train.log").read_text()
    assert "160 examples: training 6 epochs = 60 steps" in log
    assert [h["step"] for h in result.results["history"]] == [10, 20, 30, 40, 50, 60]
    assert result.results["config"]["min_train_steps"] == 60
    # results.json and the card say the epochs that ran, not only the 3 the config still holds
    schedule = result.results["schedule"]
    assert schedule["optimizer_steps"] == 60 and schedule["plan"].startswith("160 examples: training 6 epochs")
    assert f"- optimizer_steps: 60 ({schedule['plan']})" in (result.output_dir / "README.md").read_text()


def test_explicit_epochs_are_the_epochs_that_run(tiny_run):
    kw = {k: v for k, v in tiny_run.items() if k != "min_train_steps"}
    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, **kw)
    assert [h["step"] for h in result.results["history"]] == [10, 20]
    assert result.results["config"]["min_train_steps"] == 0


def test_max_steps_overrides_epochs_and_eval_steps_evaluates_mid_epoch(tiny_run):
    result = xfer_nlp.run(mode="finetune", max_steps=17, eval_steps=5, **tiny_run)
    history = result.results["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 17]
    assert history[0]["epoch"] == 0.5 and history[-1]["epoch"] == 1.7
    assert result.results["best_step"] in (5, 10, 15, 17)


def test_early_stopping_stops_at_the_right_evaluation_on_a_flat_curve(tiny_run):
    # a learning rate too small to change a prediction: every evaluation after the first is no better
    result = xfer_nlp.run(mode="finetune", learning_rate=1e-12, max_steps=100, eval_steps=5,
                          early_stopping_patience=3, **{**tiny_run, "logging_steps": 7})
    history = result.results["history"]
    assert [r["step"] for r in result.results["losses"]] == [7, 14, 20]  # the loss up to the stop is logged
    assert [h["step"] for h in history] == [5, 10, 15, 20]  # the best at 5, then three evaluations no better
    assert result.results["stopped_early"] is True and result.results["best_step"] == 5
    assert "Stopping early at step 20: 3 evaluations without a better validation accuracy" in (
        result.output_dir / "train.log").read_text()


@pytest.mark.parametrize("flags,words", [
    (["--max_steps", "0"], "--max_steps must be a positive integer, got 0"),
    (["--max_steps", "20", "--eval_steps", "50"], "--eval_steps 50 is more than the run's 20 optimizer steps"),
    (["--early_stopping_patience", "0"], "--early_stopping_patience must be a positive integer"),
])
def test_bad_step_budgets_are_one_clear_message(flags, words, tiny_model_dir, tiny_data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "finetune",
                             "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(tiny_data_dir),
                             "--output_dir", str(tmp_path / "o"), "--max_seq_length", "32", *flags],
                            capture_output=True, text=True, cwd=ROOT, env=launch_env(), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr[-2000:]


def test_the_loss_is_logged_about_20_times_a_run_unless_told(tiny_run):
    from xfer_nlp.config import RunConfig
    from xfer_nlp.loop import logging_interval

    assert [logging_interval(RunConfig(), steps) for steps in (1, 12, 28, 651, 5000)] == [1, 1, 2, 33, 50]
    assert logging_interval(RunConfig(logging_steps=7), 651) == 7
    # a short small-data run still draws a curve: 16 steps, a log at each
    run = dict(tiny_run, logging_steps=None)
    result = xfer_nlp.run(mode="finetune", max_train_samples=32, max_steps=16, **run)
    assert [r["step"] for r in result.results["losses"]] == list(range(1, 17))
