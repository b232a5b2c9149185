"""Data handed over in memory (data=): a notebook's DataFrame or Dataset runs as its files would, resumes, and is
refused with one message where it cannot be read."""

import json
import shutil

import pandas as pd
import pytest
from conftest import make_rows, write_jsonl
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, Value
from safetensors.torch import load_file

import xfer_nlp
from xfer_nlp.errors import ConfigError, DataError
from xfer_nlp.tables import save


@pytest.fixture
def in_memory(tiny_run, tmp_path, monkeypatch):
    """tiny_run without its data folder, the xfer_nlp cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return {k: v for k, v in tiny_run.items() if k != "dataset_name"}


def frame(rows):
    """A notebook's table: its own column names, an index left over from filtering."""
    df = pd.DataFrame(rows).rename(columns={"text": "review", "label": "stars"})
    df.index = range(100, 100 + len(df))
    return df


def test_dataframes_run_as_their_files_would(in_memory, tmp_path):
    train, dev = make_rows(160, 1), make_rows(48, 2)
    columns = dict(text_column="review", label_column="stars", mode="finetune", max_steps=6, mixed_precision="no")
    from_memory = xfer_nlp.run(**in_memory, **columns, data={"train": frame(train), "dev": frame(dev)})
    files = tmp_path / "files"
    write_jsonl(files / "train.jsonl", [{"review": r["text"], "stars": r["label"]} for r in train])
    write_jsonl(files / "validation.jsonl", [{"review": r["text"], "stars": r["label"]} for r in dev])
    from_files = xfer_nlp.run(**{**in_memory, "output_dir": str(tmp_path / "from-files")}, **columns,
                              dataset_name=str(files))
    assert from_memory.results["split_sizes"] == from_files.results["split_sizes"] == {"train": 160, "validation": 48}
    assert from_memory.metrics == from_files.metrics
    a, b = (load_file(r.output_dir / "model.safetensors") for r in (from_memory, from_files))
    assert all(a[k].equal(b[k]) for k in a)
    # the run names the folder its data was saved in, which reads back as the data
    folder = from_memory.results["dataset"]
    assert folder.startswith(str(tmp_path / "cache" / "xfer_nlp" / "data" / "in-memory-"))
    assert sorted(p.name for p in (tmp_path / "cache" / "xfer_nlp" / "data").iterdir()) == [folder.rsplit("/", 1)[1]]
    assert Dataset.from_parquet(f"{folder}/validation.parquet")["review"] == [r["text"] for r in dev]
    # evaluate takes data= too, and knows the run's own data by its folder: its columns are the run's
    scored = xfer_nlp.evaluate(from_memory.output_dir, data={"train": frame(train), "dev": frame(dev)},
                               output_dir=str(tmp_path / "scored"))
    assert scored.results["dataset"] == folder
    assert scored.metrics["validation"]["accuracy"] == from_memory.metrics["validation"]["accuracy"]


def test_the_same_data_is_saved_once_and_other_data_apart(tmp_path):
    rows = make_rows(40, 1)
    first = save(frame(rows), tmp_path)
    assert save(frame(rows), tmp_path) == first  # a second call (a resume, a grid continued) finds it
    assert save(Dataset.from_list(rows), tmp_path) != first  # other columns: other data
    assert save(frame(make_rows(40, 2)), tmp_path) != first
    assert [p.name for p in first.iterdir()] == ["train.parquet"]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_killed_run_on_data_in_memory_resumes_with_the_same_call(in_memory, tmp_path):
    run = dict(in_memory, mode="finetune", num_train_epochs=2, save_steps=3, save_total_limit=None,
               mixed_precision="no", text_column="review", label_column="stars")
    data = {"train": frame(make_rows(160, 1)), "validation": frame(make_rows(48, 2))}
    done = xfer_nlp.run(**run, data=data)
    reference = tmp_path / "uninterrupted"
    shutil.copytree(done.output_dir, reference)
    (done.output_dir / "results.json").unlink()  # as if killed after checkpoint-12
    for later in (c for c in (done.output_dir / "checkpoints").glob("checkpoint-*") if int(c.name.split("-")[1]) > 12):
        shutil.rmtree(later)
    resumed = xfer_nlp.run(**run, data=data, resume_from_checkpoint="latest")
    assert resumed.results["resumed"]["from_step"] == 12
    assert resumed.metrics == json.loads((reference / "results.json").read_text())["metrics"]


def test_a_dataset_s_class_label_names_the_classes(in_memory):
    rows = make_rows(160, 1)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data = DatasetDict({"train": Dataset.from_list(rows, features=features),
                        "test": Dataset.from_list(make_rows(40, 3), features=features)})
    result = xfer_nlp.run(**in_memory, mode="probe", data=data)
    assert result.results["label_names"] == ["negative", "positive"]
    assert set(result.metrics) == {"validation", "test"}  # validation held out of train, as for one file


@pytest.mark.parametrize("data,message", [
    ({"training": [{"text": "a", "label": 0}]}, "a split named 'training'. Name each split train, validation"),
    ({"val": [{"text": "a", "label": 0}], "dev": [{"text": "b", "label": 1}]},
     r"gives the validation split twice \('val' and 'dev'\)"),
    ({"train": 5}, r"data\['train'\] is int. Pass a datasets Dataset or DatasetDict, a pandas DataFrame"),
    ({"train": []}, r"data\['train'\] is an empty list"),
    ({}, "data= is empty"),
    (IterableDataset.from_generator(lambda: iter([{"text": "a", "label": 0}])), "is a streamed IterableDataset"),
    # pyarrow's and datasets' own refusals (a traceback each), said as one message
    (pd.DataFrame({"text": ["a", 5], "label": [0, 1]}), r"data\['train'\] could not be made a table \(ArrowTypeError: "
                                                       r".*Give each column values of one type"),
    (pd.DataFrame([["a", 0, 1]], columns=["text", "label", "label"]), r"could not be made a table \(ValueError: "
                                                                      r"Duplicate column names"),
])
def test_data_that_cannot_be_saved_is_one_message(in_memory, data, message):
    with pytest.raises(DataError, match=message):
        xfer_nlp.run(**in_memory, mode="probe", data=data)


def test_data_beside_another_source_is_refused(in_memory, tiny_data_dir):
    with pytest.raises(ConfigError, match="data= and dataset_name both name the data to read: pass one of them"):
        xfer_nlp.run(**in_memory, mode="probe", data=frame(make_rows(40, 1)), dataset_name=str(tiny_data_dir))
    with pytest.raises(ConfigError, match="data= and train_file both name"):
        xfer_nlp.compare(modes="probe", train_sizes="all", seeds="0", data=frame(make_rows(40, 1)),
                         train_file=str(tiny_data_dir / "train.jsonl"))


def test_compare_takes_data_in_memory(in_memory, tmp_path):
    grid = xfer_nlp.compare(modes="probe", train_sizes="32,all", seeds="0", output_dir=str(tmp_path / "grid"),
                            data={"train": frame(make_rows(160, 1)), "validation": frame(make_rows(48, 2))},
                            text_column="review", label_column="stars",
                            **{k: v for k, v in in_memory.items() if k not in ("output_dir", "seed")})
    assert (grid.ran, grid.failed) == (2, {})
    cells = sorted((tmp_path / "grid" / "runs").glob("*/results.json"))
    assert sorted(json.loads(c.read_text())["split_sizes"]["train"] for c in cells) == [32, 160]
    again = xfer_nlp.compare(modes="probe", train_sizes="32,all", seeds="0", output_dir=str(tmp_path / "grid"),
                             data={"train": frame(make_rows(160, 1)), "validation": frame(make_rows(48, 2))},
                             text_column="review", label_column="stars",
                             **{k: v for k, v in in_memory.items() if k not in ("output_dir", "seed")})
    assert (again.ran, again.skipped) == (0, 2)  # the same data again: the same grid, nothing to run
