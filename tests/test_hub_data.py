"""Any Hub dataset: a folder laid out as a Hub dataset repository goes through datasets.load_dataset, the code
path a Hub id takes; offline without a cached copy is one message; run_glue's --train_file spelling works."""

import subprocess
import sys
from pathlib import Path

from conftest import launch_env, make_rows, write_jsonl
import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, Value

import xfer_nlp
from xfer_nlp.errors import DataError

ROOT = Path(__file__).resolve().parents[1]

# Two configs, as a Hub dataset repository's README declares them; the parquet files are written by hub_layout.
CONFIGS = {"default": ("data", ("train", "validation", "test")), "small": ("small", ("train", "validation"))}
CARD = "---\n" + yaml.safe_dump({"configs": [
    {"config_name": name, "data_files": [{"split": split, "path": f"{folder}/{split}-*.parquet"} for split in splits]}
    for name, (folder, splits) in CONFIGS.items()]}, sort_keys=False) + \
    "---\n# A tiny sentiment set laid out as a Hub dataset repository\n"


def hub_layout(root: Path) -> Path:
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    for folder, split, n, seed in [("data", "train", 160, 1), ("data", "validation", 48, 2), ("data", "test", 40, 3),
                                   ("small", "train", 40, 4), ("small", "validation", 20, 5)]:
        rows = make_rows(n, seed)
        if folder == "data" and split == "test":
            rows = [{**r, "label": -1} for r in rows]  # GLUE-style: the test split is unlabelled
            feats = Features({"sentence": Value("string"), "label": Value("int64")})
        else:
            feats = features
        ds = Dataset.from_dict({"sentence": [r["text"] for r in rows], "label": [r["label"] for r in rows]},
                               features=feats)
        (root / folder).mkdir(parents=True, exist_ok=True)
        ds.to_parquet(root / folder / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text(CARD)
    return root


def test_a_hub_layout_folder_loads_with_its_configs_and_label_names(tiny_run, tmp_path):
    repo = hub_layout(tmp_path / "user__tiny-sentiment")
    kw = {**tiny_run, "dataset_name": str(repo), "text_column": "sentence"}
    result = xfer_nlp.run(mode="probe", **kw)
    assert result.results["label_names"] == ["negative", "positive"]  # from the ClassLabel feature
    assert result.results["split_sizes"] == {"train": 160, "validation": 48}  # the unlabelled test split left out
    small = xfer_nlp.run(mode="probe", dataset_config_name="small", **{**kw, "output_dir": kw["output_dir"] + "2"})
    assert small.results["split_sizes"] == {"train": 40, "validation": 20}


def test_a_hub_id_offline_without_a_cached_copy_is_one_message(tiny_model_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "probe", "--model_name_or_path",
                             str(tiny_model_dir), "--dataset_name", "nobody-xfer/no-such-dataset", "--output_dir",
                             str(tmp_path / "o"), "--max_seq_length", "32"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={**launch_env(), "HF_HUB_OFFLINE": "1",
                                                        "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Could not load dataset 'nobody-xfer/no-such-dataset'" in result.stderr
    assert "This machine is offline" in result.stderr


def test_train_file_as_run_glue_spells_it(tiny_run, tiny_data_dir):
    result = xfer_nlp.run(mode="probe", train_file=str(tiny_data_dir / "train.jsonl"),
                          validation_file=str(tiny_data_dir / "validation.jsonl"), **tiny_run)
    assert result.results["split_sizes"] == {"train": 160, "validation": 48}
    assert result.results["dataset"] == str(tiny_data_dir / "train.jsonl")
    assert result.results["data_source"] == f"{tiny_data_dir / 'train.jsonl'}, {tiny_data_dir / 'validation.jsonl'}"


def test_train_file_with_other_columns_names_the_file(tiny_run, tmp_path):
    write_jsonl(tmp_path / "reviews.jsonl", [{"review": "good", "label": 1}, {"review": "bad", "label": 0}])
    with pytest.raises(DataError, match=r"The train split of '.*reviews\.jsonl' has no column for --text_column "
                                        r"'text'\. Its columns are: review, label"):
        xfer_nlp.run(mode="probe", train_file=str(tmp_path / "reviews.jsonl"), **tiny_run)
