"""predict_stream and `xfer-nlp predict --input --output`: any number of texts, chunk by chunk, in input order."""

import json
import subprocess
import sys

from conftest import launch_env, make_rows, write_jsonl

import xfer_nlp
from xfer_nlp.api import predict_stream


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
    assert gap.returncode == 2 and "Text 5 is None" in gap.stderr
    assert not (tmp_path / "g.jsonl").exists()  # no half-written output
