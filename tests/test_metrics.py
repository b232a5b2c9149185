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
