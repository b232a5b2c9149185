"""predict_stream and `xfer-nlp predict --input --output`: any number of texts, chunk by chunk, in input order."""

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import launch_env, make_rows, write_jsonl

import xfer_nlp
from xfer_nlp.api import predict_stream
from xfer_nlp.batches import TokenBudgetSampler
from xfer_nlp.errors import ConfigError


def test_the_stream_labels_chunk_by_chunk_in_input_order_as_predict_does(tiny_run):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    texts = [r["text"] for r in make_rows(50, 11)]
    consumed = []

    def source():
        for t in texts:
            consumed.append(t)
            yield t

    rows = predict_stream(out, source(), batch_size=4, chunk_texts=7)
    first = next(rows)
    assert len(consumed) == 7  # one chunk read, not the whole source
    streamed, whole = [first, *rows], xfer_nlp.predict(out, texts, batch_size=4)
    assert [r["text"] for r in streamed] == texts
    assert [r["label"] for r in streamed] == [r["label"] for r in whole]
    # Other batch-mates, other padding: the same logits up to float summation order.
    assert max(abs(a["score"] - b["score"]) for a, b in zip(streamed, whole)) < 1e-5


def test_the_cli_streams_a_file_to_a_file_and_names_a_missing_text(tiny_run, tmp_path):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    rows = make_rows(120, 12)
    write_jsonl(tmp_path / "in.jsonl", rows)
    cli = [sys.executable, "-m", "xfer_nlp.cli", "predict", "--model", str(out)]
    done = subprocess.run([*cli, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "p.jsonl")],
                          capture_output=True, text=True, env=launch_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in written] == [r["text"] for r in rows]
    expected = xfer_nlp.predict(out, [r["text"] for r in rows])
    assert [r["label"] for r in written] == [r["label"] for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(written, expected)) < 1e-5
    write_jsonl(tmp_path / "gap.jsonl", rows[:5] + [{"text": None, "label": 0}] + rows[5:9])
    gap = subprocess.run([*cli, "--input", str(tmp_path / "gap.jsonl"), "--output", str(tmp_path / "g.jsonl")],
                         capture_output=True, text=True, env=launch_env(), timeout=300)
    assert gap.returncode == 2 and "Text 5 (counting from 0: row 6 of a file) is None" in gap.stderr
    assert not (tmp_path / "g.jsonl").exists()  # no half-written output


def test_token_budget_batches_are_longest_first_within_the_budget_and_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(3, 130, size=500)
    lengths[7] = 2000  # longer than the budget: a batch alone
    sampler = TokenBudgetSampler(lengths, max_tokens=1024)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) and sorted(i for b in drawn for i in b) == list(range(500))
    flat = [i for b in drawn for i in b]
    assert list(lengths[flat]) == sorted(lengths, reverse=True)
    assert drawn[0] == [7]
    for batch in drawn[1:]:
        longest = lengths[batch].max()
        assert len(batch) * longest <= 1024  # the padded batch fits
    # Every batch but the last is as wide as the budget allows for its longest row.
    assert all(len(b) == 1024 // lengths[b[0]] for b in drawn[1:-1])
    assert max(len(b) for b in TokenBudgetSampler(lengths, max_tokens=1024, max_rows=16)) == 16


def test_predict_batches_by_tokens_with_the_same_labels_and_rejects_a_bad_budget(tiny_run):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    texts = [r["text"] for r in make_rows(60, 13)]
    by_count = xfer_nlp.predict(out, texts, batch_size=4, batch_tokens=10**9)  # 4 texts a batch, as before budgets
    narrow, wide = xfer_nlp.predict(out, texts, batch_tokens=40), xfer_nlp.predict(out, texts)
    for rows in (narrow, wide):
        assert [r["text"] for r in rows] == texts
        assert [r["label"] for r in rows] == [r["label"] for r in by_count]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(rows, by_count)) < 1e-5
    for bad in ({"batch_tokens": 0}, {"batch_size": 0}, {"batch_tokens": 2.5}):
        with pytest.raises(ConfigError, match="whole number of at least 1"):
            xfer_nlp.predict(out, texts, **bad)


def test_a_predictor_loads_once_and_labels_as_predict_does(tiny_run, monkeypatch):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    texts = [r["text"] for r in make_rows(30, 14)]
    expected = xfer_nlp.predict(out, texts)
    loads = []
    real_load = xfer_nlp.api.load_model
    monkeypatch.setattr(xfer_nlp.api, "load_model", lambda model: loads.append(model) or real_load(model))
    predictor = xfer_nlp.Predictor(out)
    one, many, streamed = predictor(texts[3]), predictor(texts), list(predictor.stream(iter(texts), chunk_texts=8))
    assert loads == [str(out)]  # three calls, one load
    for rows in (many, streamed):
        assert [r["text"] for r in rows] == texts and [r["label"] for r in rows] == [r["label"] for r in expected]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(rows, expected)) < 1e-5
    assert one[0]["label"] == expected[3]["label"] and one[0]["scores"] == pytest.approx(expected[3]["scores"], abs=1e-5)
    with pytest.raises(ConfigError, match=r"Text 1 of 2 \(counting from 0\) is None"):
        predictor(["fine", None])
    assert predictor([]) == [] and list(predictor.stream(iter([]))) == []  # as pipeline([]); had an IndexError
    # a DataFrame iterates over its column names, which were labelled as the texts; a column of it is texts
    import pandas as pd
    from datasets import Dataset, DatasetDict

    table = pd.DataFrame({"review": texts, "stars": [0] * len(texts)})
    assert [r["label"] for r in predictor(table["review"])] == [r["label"] for r in expected]
    for given, example in ((table, "table['review']"), (Dataset.from_pandas(table), "table['review']"),
                           (DatasetDict({"test": Dataset.from_pandas(table)}), "table['test']['review']")):
        for call in (predictor, lambda t: list(predictor.stream(t))):
            with pytest.raises(ConfigError, match=rf"texts is a {type(given).__name__} \(a table with columns "
                                                  rf"review, stars\), not texts: .* e\.g\. {re.escape(example)}"):
                call(given)


def test_a_stopped_predict_leaves_no_partial_file_and_says_so(tiny_run, tmp_path):
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    write_jsonl(tmp_path / "in.jsonl", make_rows(200, 15) * 500)  # 100,000 texts: seconds of labelling
    (tmp_path / "p.jsonl").write_text("an earlier output\n")
    proc = subprocess.Popen([sys.executable, "-m", "xfer_nlp.cli", "predict", "--model", str(out), "--input",
                             str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "p.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=launch_env())
    deadline = time.time() + 300
    while not list(tmp_path.glob(".p.jsonl.tmp*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "predict ended before its output was being written; nothing was stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert f"error: Interrupted; nothing was written to {tmp_path / 'p.jsonl'}" in stderr
    assert not list(tmp_path.glob(".p.jsonl.tmp*"))  # before, a SIGTERM left the temporary file behind
    assert (tmp_path / "p.jsonl").read_text() == "an earlier output\n"  # never half-replaced


def test_predict_without_and_with_an_arrow_table_gives_the_same_rows(tiny_run, monkeypatch):
    """Up to ROWS_IN_LISTS texts a chunk's ids stay in Python lists; above, in an Arrow table: the same rows."""
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir
    texts = [r["text"] for r in make_rows(40, 16)]
    in_lists = xfer_nlp.predict(out, texts)
    monkeypatch.setattr(xfer_nlp.api, "ROWS_IN_LISTS", 0)
    in_table = xfer_nlp.predict(out, texts)
    assert in_lists == in_table
