"""The shipped evaluate module: loads offline, and agrees with scikit-learn (the test oracle only)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from xfer_nlp.metrics import MODULE, classification_metrics


def test_the_module_loads_with_the_hub_and_evaluate_offline(tmp_path):
    code = (f"import evaluate; m = evaluate.load({str(MODULE)!r}, keep_in_memory=True); "
            "print(m.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)['accuracy'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # a fresh cache: nothing could come from an earlier download
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 3), (2, 6), (3, 5)])
def test_the_figures_equal_scikit_learns_on_random_labels(seed, classes):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, classes, 500), rng.integers(0, classes, 500)
    predictions[predictions == classes - 1] = 0  # one class never predicted: its precision is 0, not undefined
    got = classification_metrics(predictions, labels, classes)
    everything = list(range(classes))
    assert got["accuracy"] == pytest.approx(float(np.mean(predictions == labels)), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", labels=everything,
                                                     zero_division=0), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=everything, zero_division=0)
    for c in everything:
        row = got["per_class"][str(c)]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
    assert got["confusion_matrix"] == confusion_matrix(labels, predictions, labels=everything).tolist()


def test_class_weights_and_the_metric_for_best_model_reach_the_run(tiny_run):
    import xfer_nlp

    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, class_weights="balanced",
                          metric_for_best_model="macro_f1", **tiny_run)
    log = (result.output_dir / "train.log").read_text()
    assert "Class weights: 0 1.000, 1 1.000" in log  # the tiny train set is balanced
    assert result.results["config"]["metric_for_best_model"] == "macro_f1"
    best = max(result.results["history"], key=lambda h: h["validation_macro_f1"])
    assert result.results["best_step"] == best["step"]
    probe = xfer_nlp.run(mode="probe", class_weights="3,1", metric_for_best_model="macro_f1",
                         **{**tiny_run, "output_dir": tiny_run["output_dir"] + "-probe"})
    assert probe.results["probe"]["C_chosen_on"] == "macro_f1"
    assert probe.results["probe"]["validation_by_C"][str(probe.results["probe"]["C"])] == max(
        probe.results["probe"]["validation_by_C"].values())


@pytest.mark.parametrize("flags,words", [
    (["--class_weights", "1,2,3"], "--class_weights has 3 weight(s), but the data has 2 classes"),
    (["--class_weights", "1,-2"], "--class_weights must be none, balanced or comma-separated non-negative"),
    (["--metric_for_best_model", "f1"], "--metric_for_best_model 'f1' is not a computed metric; choose one of "
                                        "accuracy, macro_f1"),
])
def test_bad_metric_and_weight_settings_are_one_message(flags, words, tiny_model_dir, tiny_data_dir, tmp_path):
    from conftest import launch_env

    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "probe", "--model_name_or_path",
                             str(tiny_model_dir), "--dataset_name", str(tiny_data_dir), "--output_dir",
                             str(tmp_path / "o"), "--max_seq_length", "32", *flags], capture_output=True, text=True,
                            env=launch_env(), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr[-2000:]
