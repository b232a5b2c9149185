"""Each new benchmark script run end to end at a tiny size, so none silently rots."""

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import one_process_env

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str, cwd: Path, tmp: Path | None = None) -> subprocess.CompletedProcess:
    # A benchmark runs one process at a time, so unlike launch_env()'s 2-process runs it gets the test's threads.
    env = one_process_env() if tmp is None else {**one_process_env(), "TMPDIR": str(tmp)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                            text=True, cwd=cwd, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_imbalance_benchmark_smoke(tmp_path):
    out = tmp_path / "imbalance"
    result = bench("imbalance.py", "--tiny", "--seeds", "0", "--variants", "probe,probe[class_weights=balanced]",
                   "--output_dir", str(out), cwd=tmp_path)
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    negatives = sum(1 - r["label"] for r in train) / len(train)
    assert abs(negatives - 0.1) < 0.01  # the imbalance the table is about
    assert "probe[class_weights=balanced]" in (out / "comparison.md").read_text()
    assert "| probe | all | 1 |" in result.stdout


def test_predict_benchmark_smoke(tmp_path):
    out = tmp_path / "predict.md"
    bench("predict.py", "--limit", "40", "--repeats", "1", "--out", str(out), cwd=tmp_path)
    table = out.read_text()
    assert "| sst2 validation | 40 | fp32 |" in table and "| 40 of 40 |" in table  # fp32: pipeline()'s labels
    assert "| sst2 validation | 40 | bf16 |" in table
    onnx = table.split("ONNX (onnxruntime")[1]
    assert onnx.count("| 40 of 40 |") == 2  # ONNX labels equal torch's on both sets
    latency = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \|$", table.split("One sentence at a time")[1], re.M))
    assert set(latency) == {"xfer_nlp.predict(MODEL, text)", "xfer_nlp.Predictor(MODEL) built once, then called",
                            "pipeline() built once, then called"} and all(float(ms) > 0 for ms in latency.values())


def test_setfit_peer_smoke(tmp_path):
    out = tmp_path / "grid"
    bench("setfit_peer.py", "--train_sizes", "8", "--seeds", "0", "--max_steps", "2", "--output_dir", str(out),
          cwd=tmp_path)
    results = json.loads((out / "runs" / "setfit-n8-s0" / "results.json").read_text())
    assert results["train_samples"] == 8 and results["split_sizes"]["validation"] == 872  # the same split as a run
    assert "setfit (peer)" in (out / "comparison.md").read_text()
    # xfer_nlp's cells beside it, then issue 22's checks read off the grid
    xfer = subprocess.run([str(Path(sys.executable).parent / "xfer-nlp"), "compare", "--modes",
                           "probe,contrastive,probe[probe_c_grid=1]",
                           "--train_sizes", "8", "--seeds", "0", "--pair_iterations", "1", "--output_dir", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=one_process_env(), timeout=900)
    assert xfer.returncode == 0, xfer.stderr[-3000:]
    assert "| setfit (peer) | 8 |" in (out / "comparison.md").read_text()  # compare reports the whole folder
    report = bench("small_data.py", str(out), cwd=tmp_path).stdout
    # a variant other than a step cap is a column of its own, not averaged into its mode's
    assert "| n | probe | contrastive | probe[probe_c_grid=1] | setfit (peer) |" in report
    row = next(line for line in report.splitlines() if line.startswith("| 8 |") and "x |" in line)
    best, vs, pairs, delta, ours, peer, ratio, per_run = (x.strip() for x in row.strip("|").split("|")[1:])
    assert best.split()[0] in ("probe", "contrastive") and vs.startswith(("+", "-"))
    # one seed: the paired difference is the difference, and it counts that seed on the side its sign says
    assert pairs.split()[0] == vs.split()[0]
    assert pairs.endswith("(0 of 1 seeds ≥)" if vs[0] == "-" else "(1 of 1 seeds ≥)")
    assert delta.startswith(("+", "-")) and "C = 1" in delta  # also shown with nothing chosen on validation
    assert abs(float(peer) / float(ours) / float(ratio.rstrip("x")) - 1) < 0.1  # seconds shown to 0.1 s
    # per run, the peer's scoring of validation (timed apart from its training) joins its seconds
    assert results["validation_seconds"] > 0
    expected = (results["train_seconds"] + results["validation_seconds"]) / float(ours)
    assert abs(float(per_run.rstrip("x")) / expected - 1) < 0.1, (row, results["validation_seconds"])


def test_cross_domain_benchmark_smoke(tmp_path):
    out = tmp_path / "cross"
    result = bench("cross_domain.py", "--tiny", "--modes", "probe", "--output_dir", str(out), cwd=tmp_path)
    evaluated = json.loads((out / "sst2-probe-on-polarity2k" / "evaluation.json").read_text())
    assert evaluated["split_sizes"] == {"validation": 200, "test": 200}  # the target's own splits, all of them
    mr = json.loads((out / "mr-probe" / "results.json").read_text())
    on_mr = json.loads((out / "sst2-probe-on-mr" / "evaluation.json").read_text())
    assert on_mr["split_sizes"]["validation"] == mr["split_sizes"]["validation"]  # the same hold-out
    assert "| probe |" in result.stdout


def test_long_texts_benchmark_smoke(tmp_path):
    out = tmp_path / "long"
    result = bench("long_texts.py", "--tiny", "--modes", "probe,finetune", "--settings", "head-128", "--seeds", "0",
                   "--keep_freed_memory", "--output_dir", str(out), cwd=tmp_path)
    assert "| probe | head-128 | 1 |" in result.stdout and "| finetune | head-128 | 1 |" in result.stdout
    trained = json.loads(next((out / "runs").glob("finetune-*-s0")).joinpath("results.json").read_text())
    assert trained["config"]["keep_freed_memory"] is True
    # --report_only tabulates the finished cells and trains none of the seeds asked for
    result = bench("long_texts.py", "--tiny", "--modes", "finetune", "--settings", "head-128", "--seeds", "1",
                   "--report_only", "--output_dir", str(out), "--out", str(tmp_path / "long.md"), cwd=tmp_path)
    assert "| finetune | head-128 | 1 |" in result.stdout and not list((out / "runs").glob("*-s1"))
    assert (tmp_path / "long.png").stat().st_size > 0 and "(long.png)" in (tmp_path / "long.md").read_text()
    # a call for one mode (its cell done, so nothing trains) leaves the folder's report covering every cell
    bench("long_texts.py", "--tiny", "--modes", "finetune", "--settings", "head-128", "--seeds", "0",
          "--output_dir", str(out), cwd=tmp_path)
    assert "| probe[" in (out / "comparison.md").read_text() and "| finetune[" in (out / "comparison.md").read_text()
    result = bench("long_texts.py", "--memory", "--tiny", "--output_dir", str(tmp_path / "memory"), cwd=tmp_path)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1") and "MB" not in line]
    assert len(rows) == 1 and all(float(x) > 0 for row in rows for x in row.strip("|").split("|")[1:])


def test_probe_head_benchmark_smoke(tmp_path):
    result = bench("probe_head.py", "--sizes", "8", "--draws", "2", "--max_train_samples", "40", "--output_dir",
                   str(tmp_path / "head"), cwd=tmp_path)
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 8 |"))
    assert len(row.strip("|").split("|")) == 5 and "±" in row


# The older benchmark scripts, each at a size that takes seconds, so that none rots between measurements.
def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.md"
    bench("speed.py", "--max_train_samples", "64", "--num_train_epochs", "1", "--contestants",
          "trainer-grouped,xfer_nlp", "--out", str(out), cwd=tmp_path)
    table = out.read_text()
    assert "| trainer-grouped |" in table and "| xfer_nlp |" in table
    assert table.index("Time to accuracy") < table.index("| contestant |")  # the headline comes first
    assert "| fp32 (xfer_nlp vs trainer-grouped) |" in table


def test_levers_benchmark_smoke(tmp_path):
    result = bench("levers.py", "--variants", "fused", cwd=tmp_path)
    assert "fused" in result.stdout and "ms" in result.stdout


def test_modes_benchmark_smoke(tmp_path):
    out = tmp_path / "modes.md"
    bench("modes.py", "--modes", "probe", "--runs_dir", str(tmp_path / "runs"), "--out", str(out), "--",
          "--max_train_samples", "64", cwd=tmp_path)
    assert "| probe |" in out.read_text()


def test_precision_benchmark_smoke(tmp_path):
    out = tmp_path / "precision.md"
    bench("precision.py", "--sizes", "minilm", "--seq_lens", "16", "--precisions", "no", "--steps", "2",
          "--warmup", "1", "--out", str(out), cwd=tmp_path)
    assert "minilm" in out.read_text()


def test_probe_benchmark_smoke(tmp_path):
    out = tmp_path / "probe.md"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bench("probe.py", "--skip_trainer", "--max_train_samples", "64", "--out", str(out), cwd=tmp_path, tmp=tmp)
    assert "| xfer_nlp probe, cold cache" in out.read_text() and "| mr |" in out.read_text()
    assert not list(tmp.glob("xfer-probe-bench-*"))  # its runs and feature caches (~350 MB at full size) are gone


def test_scale_benchmark_smoke(tmp_path):
    out = tmp_path / "scale.md"
    bench("scale.py", "--sizes", "300,600", "--probe_sizes", "300", "--predict_sizes", "300,600", "--steps", "3",
          "--work_dir", str(tmp_path / "w"), "--out", str(out), cwd=tmp_path)
    table = out.read_text()
    assert "| 300 |" in table and "| 600 |" in table
    train = (tmp_path / "w" / "data" / "sst2x600" / "train.jsonl").read_text().splitlines()
    assert len(train) == 600  # repeated to size
    probe_row = table.split("| probe: training examples")[1].splitlines()[2]
    assert probe_row.split("|")[5].strip() == "1544"  # 384 fp32 features + an int64 label per text, plus headers
    predict_rows = table.split("| predict: texts")[1].splitlines()[2:4]  # the cell checked each wrote every row
    assert [row.split("|")[1].strip() for row in predict_rows] == ["300", "600"]
    assert all(float(row.split("|")[4].replace(",", "")) > 0 for row in predict_rows)  # a measured peak RSS


def test_allocators_benchmark_smoke(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "allocators.md"
    bench("allocators.py", "--settings", "glibc,tcmalloc,glibc --keep_freed_memory,glibc --gradient_checkpointing",
          "--max_steps", "2",
          "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(tiny_data_dir), "--max_seq_length", "32",
          "--out", str(out), cwd=tmp_path)
    rows = {row.split("|")[1].strip(): row.split("|")[2:-1] for row in out.read_text().splitlines()[8:]}
    assert list(rows) == ["glibc", "tcmalloc", "glibc --keep_freed_memory", "glibc --gradient_checkpointing"]
    ran = [cells for cells in rows.values() if "not installed" not in cells[0]]
    # same weights under every malloc, and with each layer's activations recomputed
    assert len(ran) >= 3 and all(cells[-1].strip() == "yes" for cells in ran)
    assert all(float(cells[4]) > 0 for cells in ran)  # a measured peak RSS
    if "not installed" in rows["tcmalloc"][0]:
        assert "apt-get install libtcmalloc-minimal4" in rows["tcmalloc"][0]


def test_early_stopping_report_reads_a_committed_grid(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from early_stopping import stopped

    curve = [{"step": s, "validation_accuracy": a} for s, a in enumerate([0.5, 0.6, 0.6, 0.58, 0.7])]
    assert stopped(curve, "validation_accuracy", None) == (0.7, curve[-1])
    assert stopped(curve, "validation_accuracy", 2) == (0.6, curve[3])  # a tie is no improvement, as in the loop
    assert stopped(curve, "validation_accuracy", 3) == (0.7, curve[-1])
    out = tmp_path / "early.md"
    report = bench("early_stopping.py", str(ROOT / "benchmarks" / "results" / "grid-mr"), "--patience", "1,3,10",
                   "--out", str(out), cwd=tmp_path).stdout
    assert out.read_text().strip() == report.strip()
    summary = {int(row.split("|")[1]): row.split("|")[2:-1] for row in report.splitlines()
               if row.startswith("| ") and row.split("|")[1].strip().isdigit()}
    assert list(summary) == [1, 3, 10]
    worse = [int(cells[1]) for cells in summary.values()]
    spent = [float(cells[4].strip().rstrip("%")) for cells in summary.values()]
    # more patience never keeps a worse evaluation in more cells, and never stops sooner
    assert worse == sorted(worse, reverse=True) and spent == sorted(spent)
    assert worse[-1] == 0 and spent[-1] == 100  # no cell has more than 10 evaluations: none stops early
    assert "| finetune | 16 | 3 | 10 |" in report  # a row per mode and size, with its seeds and evaluations


def test_transformers4_benchmark_smoke(tmp_path):
    out = tmp_path / "transformers4.md"
    bench("transformers4.py", "--modes", "probe", "--max_train_samples", "64", "--output_dir", str(tmp_path / "runs"),
          "--out", str(out), cwd=tmp_path)
    table = out.read_text()
    assert table.startswith("transformers 5.") and " against 4.57.6," in table
    assert "| probe | XferPooledForSequenceClassification | 872 |" in table  # every label the same under both


def test_text_pairs_benchmark_smoke(tmp_path):
    out, report = tmp_path / "pairs", tmp_path / "pairs.md"
    bench("text_pairs.py", "--tiny", "--modes", "probe", "--train_sizes", "all", "--output_dir", str(out), "--out",
          str(report), cwd=tmp_path)
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 400 and set(train[0]) == {"sentence1", "sentence2", "label"}
    # entail: each sentence once with each statement, true for one: neither text alone tells the label
    by_sentence = {}
    for r in train:
        by_sentence.setdefault(r["sentence1"], {})[r["sentence2"]] = r["label"]
    assert all(sorted(v.values()) == ["no", "yes"] for v in by_sentence.values())
    cell = json.loads(next((out / "runs").glob("*/results.json")).read_text())
    assert cell["reading"]["pairs"] is True and cell["config"]["text_pair_column"] == "sentence2"
    assert "| probe | all | 1 |" in report.read_text()
