"""The probe's feature cache in shards: an interrupted encoding of a large split resumes at the first missing shard."""

from pathlib import Path

import pytest
from conftest import data_folder, make_rows

import xfer_nlp
from xfer_nlp import probe


def test_an_interrupted_encoding_resumes_without_re_encoding_finished_shards(tiny_run, tmp_path_factory, monkeypatch):
    data = data_folder(tmp_path_factory, "big", train=make_rows(1000, 4), validation=make_rows(48, 2))
    run = dict(tiny_run, dataset_name=str(data), feature_cache_shard_size=150, probe_c_grid="0.1,1")
    cache = Path(run["feature_cache_dir"])
    real, calls = probe.encode, []

    def counted(*args, stop_at=None, **kwargs):
        calls.append(kwargs["first_text"])
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # Ctrl-C while the 4th shard encodes
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "encode", lambda *a, **k: counted(*a, stop_at=4, **k))
    with pytest.raises(KeyboardInterrupt):
        xfer_nlp.run(mode="probe", **{**run, "output_dir": run["output_dir"] + "-interrupted"})
    finished = sorted(cache.rglob("texts-*.safetensors"))
    assert [p.name for p in finished] == ["texts-0-150.safetensors", "texts-150-300.safetensors",
                                          "texts-300-450.safetensors"]
    written = {p: p.stat().st_mtime_ns for p in finished}

    calls.clear()
    monkeypatch.setattr(probe, "encode", counted)
    resumed = xfer_nlp.run(mode="probe", **run)
    assert calls == [450, 600, 750, 900, 0]  # the four missing train shards, then validation; none encoded twice
    assert {p: p.stat().st_mtime_ns for p in finished} == written  # the finished shards were read, not rewritten
    assert resumed.results["probe"]["feature_cache_shards"] == {"train": "3 of 7", "validation": "0 of 1"}
    assert "3 of 7 shards from the feature cache" in (resumed.output_dir / "train.log").read_text()

    calls.clear()
    uncached = xfer_nlp.run(mode="probe", no_feature_cache=True, **{**run, "output_dir": run["output_dir"] + "-u"})
    assert calls == [0, 150, 300, 450, 600, 750, 900, 0]
    assert uncached.metrics == resumed.metrics  # shards read back give exactly the encoded features' head
    assert uncached.results["probe"]["validation_by_C"] == resumed.results["probe"]["validation_by_C"]
