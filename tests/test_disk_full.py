"""A disk that fills up mid-run: one message that says what could not be written and how to go on, the half-written
files removed, everything written before intact, and the run resumable to the result it would have had.

The disk is real: a small tmpfs mounted for the test (root in a container that allows mounts, as this project's
machines are; elsewhere those tests skip and the error classification below still runs)."""

import errno
import json
import re
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError

import xfer_nlp
from xfer_nlp.runfolder import disk_full


class Disk:
    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def fill(self) -> None:
        """Every free byte taken by one file, as another program filling the disk would."""
        with open(self.path / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*"))


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"a tmpfs cannot be mounted here ({mounted.stderr.strip()})")
    yield Disk(path)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_what_a_full_disk_looks_like_to_each_writer(tmp_path):
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "no space is left on the disk"
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path) == "the disk quota is used up"
    # safetensors' own error type, its message as a full disk makes it (measured on a full tmpfs)
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full(full, tmp_path) == "no space is left on the disk"
    # anything else is not a full disk while the disk has room
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
                     tmp_path) is None


def test_torch_save_on_a_full_disk_is_recognised(disk):
    """torch.save reports a full disk as a RuntimeError without an errno: recognised by the disk being full."""
    import torch

    with pytest.raises(RuntimeError) as failed:
        torch.save({"w": torch.zeros(100_000)}, disk.path / "w.pt")
    assert disk_full(failed.value, disk.path) == "no space is left on the disk"


def test_a_checkpoint_the_disk_cannot_hold_stops_the_run_and_it_resumes_to_the_same_result(tiny_run, tmp_path, disk):
    settings = dict(tiny_run, mode="finetune", num_train_epochs=3, learning_rate=1e-3)
    reference = xfer_nlp.run(**settings)
    checkpoint = _size(next((reference.output_dir / "checkpoints").glob("checkpoint-*")))
    weights = (reference.output_dir / "model.safetensors").stat().st_size
    # room for the first epoch's checkpoint and kept weights, not for the second checkpoint beside them
    disk.resize(f"{(checkpoint + 2 * weights + 64 * 1024) // 1024}k")
    out = disk.path / "out"
    with pytest.raises(xfer_nlp.XferError) as stopped:
        xfer_nlp.run(**dict(settings, output_dir=str(out)))
    message = str(stopped.value)
    assert message.startswith("Could not write checkpoint-") and f"'{out / 'checkpoints'}'" in message, message
    assert message.endswith("then resume with the same command and --resume_from_checkpoint latest (checkpoint-10 "
                            "and the checkpoints before it are intact)."), message
    assert not [f for f in disk.files() if ".tmp" in f]  # the half-written checkpoint is gone, its space free
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-10"]

    disk.resize("16m")
    resumed = xfer_nlp.run(**dict(settings, output_dir=str(out), resume_from_checkpoint="latest"))
    assert resumed.record.metrics == reference.record.metrics
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.record.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in reference.record.history]


def test_an_export_the_disk_cannot_hold_leaves_no_half_written_model(tiny_run, disk):
    out = disk.path / "out"
    settings = dict(tiny_run, mode="probe", output_dir=str(out))
    with pytest.raises(xfer_nlp.XferError) as stopped:
        xfer_nlp.run(**settings)
    message = str(stopped.value)
    assert re.match(rf"Could not write the exported model \(0 MB\) and the run's results: no space is left on the "
                    rf"disk \('{re.escape(str(out))}'; 0 MB free now\)\.", message), message
    assert message.endswith("Free space, then run the same command again with --overwrite_output_dir."), message
    assert not (out / ".export.tmp").exists() and not (out / "results.json").exists()

    disk.resize("16m")
    done = xfer_nlp.run(**dict(settings, overwrite_output_dir=True))
    assert (done.output_dir / "results.json").is_file() and (done.output_dir / "model.safetensors").is_file()


def test_a_feature_cache_on_a_full_disk_is_skipped_with_a_warning(tiny_run, disk, caplog):
    disk.fill()
    before = disk.files()
    result = xfer_nlp.run(**dict(tiny_run, mode="probe", feature_cache_dir=str(disk.path / "features")))
    assert (result.output_dir / "results.json").is_file()
    log = (result.output_dir / "train.log").read_text()
    assert f"Feature cache: could not write to {disk.path / 'features'}/" in log
    assert "this run goes on and caches nothing more" in log
    assert log.count("Feature cache: could not write") == 1  # said once, not per split
    assert [f for f in disk.files() if not f.startswith("features")] == before


def test_a_grid_stops_at_the_first_cell_the_disk_cannot_hold(tiny_run, disk):
    grid = disk.path / "grid"
    cells = {k: v for k, v in tiny_run.items() if k != "seed"}  # the grid sets each cell's seed
    with pytest.raises(xfer_nlp.XferError) as stopped:
        xfer_nlp.compare(**dict(cells, output_dir=str(grid)), modes="probe", train_sizes="40,80", seeds="0")
    message = str(stopped.value)
    assert message.startswith("The grid stopped in cell probe-n40-s0: no space is left on the disk"), message
    assert message.endswith("then run the same compare command again: finished cells are kept and this one starts "
                            "over."), message
    assert not (grid / "runs" / "probe-n80-s0").exists()  # not tried: it would fail alike


def test_predictions_the_disk_cannot_hold_are_one_line_and_no_file(tiny_run, disk, capsys):
    from xfer_nlp import cli

    model = xfer_nlp.run(**dict(tiny_run, mode="probe")).output_dir
    texts = disk.path.parent / "texts.txt"
    texts.write_text("a dull film\na moving story\n" * 500)
    disk.fill()
    output = disk.path / "predictions.jsonl"
    assert cli.main(["predict", "--model", str(model), "--input", str(texts), "--output", str(output)]) == 2
    printed = capsys.readouterr().err
    err = printed[printed.index("error: "):].splitlines()[0]  # after the progress bar's carriage return
    assert err.startswith(f"error: Could not write the predictions to {output}: no space is left on the disk"), err
    assert err.endswith("Nothing was written: the file appears only when complete. Free space, or pass --output on "
                        "another disk."), err
    assert disk.files() == ["filler"]
    assert json.loads((model / "results.json").read_text())["mode"] == "probe"


def test_an_onnx_export_the_disk_cannot_hold_is_one_message_and_no_file(tiny_run, disk):
    model = xfer_nlp.run(**dict(tiny_run, mode="probe")).output_dir
    disk.fill()
    output = disk.path / "model.onnx"
    with pytest.raises(xfer_nlp.XferError) as stopped:
        xfer_nlp.export_onnx(model, output)
    assert str(stopped.value).startswith(f"Could not write the ONNX model to {output}: no space is left on the disk")
    assert disk.files() == ["filler"]


def test_a_datasets_cache_that_cannot_be_written_is_named_with_the_variable_that_moves_it(tiny_run, disk,
                                                                                           monkeypatch, capsys):
    """datasets writes its cache even for a local file read into memory. A read-only home (a container's, a
    cluster node's) ended in "Could not read 'train.jsonl' as json ... Check that every row is well-formed": the
    data blamed for the machine. Now the cache is named, with HF_HOME."""
    import datasets

    from xfer_nlp import cli

    model = xfer_nlp.run(**dict(tiny_run, mode="probe")).output_dir
    subprocess.run(["mount", "-o", "remount,ro", str(disk.path)], check=True, capture_output=True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(disk.path / "huggingface" / "datasets"))
    fix = "Point HF_HOME (or HF_DATASETS_CACHE) at a folder you may write with room to spare"
    with pytest.raises(xfer_nlp.DataError) as refused:
        xfer_nlp.run(**dict(tiny_run, mode="probe", output_dir=str(disk.path.parent / "again")))
    assert str(refused.value).startswith(f"datasets could not write its cache in {disk.path}/huggingface/datasets "
                                         "(Read-only file system: ") and fix in str(refused.value)
    texts = disk.path.parent / "texts.jsonl"
    texts.write_text('{"text": "a dull film"}\n')
    assert cli.main(["predict", "--model", str(model), "--input", str(texts)]) == 2
    assert fix in capsys.readouterr().err
