"""What a run reports beyond two numbers: predictions.jsonl, confusion_matrix.png, --metrics modules, and
`xfer-nlp evaluate` scoring an export on other data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import launch_env, make_rows, write_jsonl

import xfer_nlp
from xfer_nlp.config import RunConfig
from xfer_nlp.errors import ConfigError, DataError

# A local evaluate module, as a user would write one: the mean of per-class recall.
BALANCED = '''
import datasets
import evaluate
import numpy as np

class BalancedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="mean per-class recall", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions), np.asarray(references)
        return {"balanced_accuracy": float(np.mean([np.mean(p[r == c] == c) for c in np.unique(r)]))}
'''


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_trained_run_keeps_its_loss_curve_and_plots_it_and_a_probe_over_it_leaves_none(tiny_run):
    result = xfer_nlp.run(mode="finetune", num_train_epochs=2, **tiny_run)  # 10 steps an epoch, logged every 5
    out, results = result.output_dir, result.results
    assert [r["step"] for r in results["losses"]] == [5, 10, 15, 20]
    assert [r["epoch"] for r in results["losses"]] == [0.5, 1.0, 1.5, 2.0]
    assert all(np.isfinite(r["loss"]) for r in results["losses"])
    assert results["losses"][0]["learning_rate"] > 0 == results["losses"][-1]["learning_rate"]  # linear decay to 0
    log = (out / "train.log").read_text()
    for r in results["losses"]:  # the log file carries what results.json does
        assert f"Step {r['step']} (epoch {r['epoch']:g}): training loss {r['loss']:.4f}" in log
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "training_curves.png" in results["files"]  # pushed with the model
    assert "![training loss and validation by step](training_curves.png)" in (out / "README.md").read_text()
    # A probe has no training loop: rerun into the same folder, it leaves no curve of the run it replaced.
    probed = xfer_nlp.run(**{**tiny_run, "mode": "probe", "overwrite_output_dir": True})
    assert probed.results["losses"] == [] and not (out / "training_curves.png").exists()
    assert "training_curves.png" not in probed.results["files"]
    assert "training_curves.png" not in (out / "README.md").read_text()


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_predictions_and_the_confusion_matrix_are_the_reported_metrics(mode, tiny_run, tiny_data_dir):
    result = xfer_nlp.run(mode=mode, num_train_epochs=2, **tiny_run)
    out = result.output_dir
    rows = read_rows(out / "predictions.jsonl")
    for split in ("validation", "test"):
        mine = [r for r in rows if r["split"] == split]
        source = read_rows(tiny_data_dir / f"{split}.jsonl")
        assert [r["index"] for r in mine] == list(range(len(source)))  # data order, not evaluation order
        assert [r["text"] for r in mine] == [r["text"] for r in source]
        assert [r["label"] for r in mine] == [str(r["label"]) for r in source]
        m = result.metrics[split]
        assert np.mean([r["label"] == r["predicted"] for r in mine]) == m["accuracy"]
        names = result.results["label_names"]
        counts = [[sum(r["label"] == a and r["predicted"] == b for r in mine) for b in names] for a in names]
        assert counts == m["confusion_matrix"] == result.results["metrics"][split]["confusion_matrix"]
        assert set(m["per_class"]) == {"0", "1"} and sum(c["support"] for c in m["per_class"].values()) == len(mine)
        for r in mine:
            assert r["predicted"] == max(r["scores"], key=r["scores"].get) and r["score"] == r["scores"][r["predicted"]]
            assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert "confusion_matrix.png" in results["files"] and "predictions.jsonl" not in results["files"]  # no data pushed
    # scoring the test split is timed apart from training (a peer's timing leaves out its evaluation too)
    assert results["test_seconds"] > 0 and results["train_seconds"] > 0
    if mode == "probe":
        assert results["probe"]["test_seconds"] == results["test_seconds"]
    # The scores are what the export computes: predict() on the validation texts gives the same probabilities.
    val = [r for r in rows if r["split"] == "validation"]
    again = xfer_nlp.predict(out, [r["text"] for r in val])
    for r, p in zip(val, again):
        assert p["label"] == r["predicted"]
        assert p["scores"] == pytest.approx(r["scores"], abs=1e-5)


def test_a_metrics_module_is_scored_every_evaluation_and_can_choose_the_epoch(tiny_run, tmp_path):
    module = tmp_path / "balanced_accuracy.py"
    module.write_text(BALANCED)
    result = xfer_nlp.run(mode="finetune", num_train_epochs=3, metrics=str(module),
                          metric_for_best_model="balanced_accuracy", **tiny_run)
    history = result.results["history"]
    # every evaluation scores validation only; the test split is scored once, with the kept weights
    assert len(history) == 3 and all("validation_balanced_accuracy" in h and not any(k.startswith("test_") for k in h)
                                     for h in history)
    assert "balanced_accuracy" in result.metrics["test"]
    best = max(history, key=lambda h: h["validation_balanced_accuracy"])  # first of equals: max keeps the first
    assert result.results["best_step"] == best["step"]
    recalls = [c["recall"] for c in result.metrics["validation"]["per_class"].values()]
    assert result.metrics["validation"]["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_evaluate_scores_an_export_on_a_dataset_exactly_as_the_run_did(tiny_run, tiny_data_dir, tmp_path):
    run = xfer_nlp.run(mode="probe", **tiny_run)
    scored = xfer_nlp.evaluate(run.output_dir, dataset_name=str(tiny_data_dir), max_seq_length=32,
                               output_dir=str(tmp_path / "eval"))
    for split in ("validation", "test"):
        assert scored.metrics[split] == run.metrics[split]
    # the same rows and labels; the scores to float rounding (the run scored with the head on its features, the
    # export computes the head folded into its weights: 1.5e-8 apart on an AMD EPYC)
    evaluated = read_rows(tmp_path / "eval" / "predictions.jsonl")
    trained = read_rows(run.output_dir / "predictions.jsonl")
    unscored = lambda rows: [{k: v for k, v in r.items() if k not in ("score", "scores")} for r in rows]  # noqa: E731
    assert unscored(evaluated) == unscored(trained)
    for e, t in zip(evaluated, trained):
        assert e["scores"] == pytest.approx(t["scores"], abs=1e-6) and e["score"] == pytest.approx(t["score"], abs=1e-6)
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"] == scored.metrics
    # a notebook shows each result as its table, not as the folder it was written to
    for result in (run, scored):
        table = result._repr_markdown_()
        assert all(f"| {split} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" in table
                   for split, m in result.metrics.items()) and str(result.output_dir) in table

    # Other data with the labels spelt as names, in another order: matched by name, through the command line.
    other = tmp_path / "other"
    names = {0: "1", 1: "0"}  # label 0 of this file means the model's class "1"
    rows = make_rows(60, 9)
    write_jsonl(other / "train.jsonl", [{"text": r["text"], "label": names[1 - r["label"]]} for r in rows[:30]])
    write_jsonl(other / "validation.jsonl", [{"text": r["text"], "label": names[1 - r["label"]]} for r in rows[30:]])
    # --model MODEL, as predict spells it, is accepted beside the positional MODEL
    cli = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "evaluate", "--model", str(run.output_dir),
                          "--dataset_name", str(other), "--max_seq_length", "32", "--output_dir",
                          str(tmp_path / "eval-other")],
                         capture_output=True, text=True, env=launch_env(), timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    got = json.loads((tmp_path / "eval-other" / "evaluation.json").read_text())
    predicted = xfer_nlp.predict(run.output_dir, [r["text"] for r in rows[30:]])
    expected = np.mean([p["label"] == str(r["label"]) for p, r in zip(predicted, rows[30:])])
    assert got["metrics"]["validation"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert "validation" in cli.stdout and "accuracy" in cli.stdout


def test_one_file_is_scored_on_the_runs_hold_out_or_on_every_row(tiny_run, tmp_path):
    """A file without a validation split: by default the seeded hold-out a run on it validated on (the same rows
    and score as the run's), with all_rows every row in file order."""
    rows = make_rows(80, 12)
    mine = write_jsonl(tmp_path / "mine.jsonl", rows)
    run = xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(mine)})
    held = xfer_nlp.evaluate(run.output_dir, dataset_name=str(mine), output_dir=str(tmp_path / "held"))
    assert held.results["split_sizes"] == {"validation": 8} and held.metrics["validation"] == run.metrics["validation"]
    assert held.results["data_notes"][0] == "no validation split: held out a seeded stratified 10% of train"
    every = xfer_nlp.evaluate(run.output_dir, dataset_name=str(mine), all_rows=True, output_dir=str(tmp_path / "all"))
    assert every.results["split_sizes"] == {"validation": 80}
    assert [r["text"] for r in read_rows(tmp_path / "all" / "predictions.jsonl")] == [r["text"] for r in rows]
    labels = [p["label"] for p in xfer_nlp.predict(run.output_dir, [r["text"] for r in rows])]
    assert every.metrics["validation"]["accuracy"] == np.mean([p == str(r["label"]) for p, r in zip(labels, rows)])
    # a file of one class (all positive reviews) can be scored whole, though no model can be trained on it
    ones = write_jsonl(tmp_path / "ones.jsonl", [r for r in rows if r["label"] == 1])
    with pytest.raises(DataError, match=r"a single class .*To score a model on a file of one class: xfer-nlp "
                                        r"evaluate --all_rows"):
        xfer_nlp.evaluate(run.output_dir, dataset_name=str(ones), output_dir=str(tmp_path / "ones-held"))
    positive = xfer_nlp.evaluate(run.output_dir, dataset_name=str(ones), all_rows=True,
                                 output_dir=str(tmp_path / "ones-all"))
    assert positive.metrics["validation"]["per_class"]["1"]["support"] == 40
    assert positive.metrics["validation"]["accuracy"] == np.mean([p == "1" for p, r in zip(labels, rows)
                                                                  if r["label"] == 1])


def test_a_folder_or_hub_dataset_of_evaluation_splits_alone_is_scored_as_it_is(tiny_run, tmp_path):
    """A test set with no train beside it (a folder holding test.jsonl, a Hub dataset of one test split) was refused
    as having no train file, though evaluate never trains."""
    from datasets import Dataset

    run = xfer_nlp.run(mode="probe", **tiny_run)
    test_rows, more_rows = make_rows(40, 21), make_rows(24, 22)
    folder = tmp_path / "test-only"
    write_jsonl(folder / "test.jsonl", test_rows)
    scored = xfer_nlp.evaluate(run.output_dir, dataset_name=str(folder), output_dir=str(tmp_path / "e1"))
    assert scored.results["split_sizes"] == {"test": 40}
    assert scored.results["data_notes"] == ["no train split: scoring test as it is"]
    labels = [p["label"] for p in xfer_nlp.predict(run.output_dir, [r["text"] for r in test_rows])]
    assert scored.metrics["test"]["accuracy"] == np.mean([p == str(r["label"]) for p, r in zip(labels, test_rows)])
    # validation and test, and one class alone (a file of positive reviews): each scored, none held out
    write_jsonl(folder / "validation.jsonl", [r for r in more_rows if r["label"] == 1])
    both = xfer_nlp.evaluate(run.output_dir, dataset_name=str(folder), output_dir=str(tmp_path / "e2"))
    assert both.results["split_sizes"] == {"validation": 12, "test": 40}
    assert both.metrics["test"] == scored.metrics["test"]
    # a folder laid out as a Hub dataset repository (the Hub id code path) with one labelled test split
    repo = tmp_path / "user__test-only"
    (repo / "data").mkdir(parents=True)
    Dataset.from_list(test_rows).to_parquet(repo / "data" / "test-00000-of-00001.parquet")
    hub = xfer_nlp.evaluate(run.output_dir, dataset_name=str(repo), output_dir=str(tmp_path / "e3"))
    assert hub.metrics["test"] == scored.metrics["test"]
    # the file itself, as run_glue's flags name it: --test_file (or --validation_file) with no --train_file
    alone = xfer_nlp.evaluate(run.output_dir, test_file=str(folder / "test.jsonl"), output_dir=str(tmp_path / "e5"))
    assert alone.metrics["test"] == scored.metrics["test"] and alone.results["dataset"] == str(folder / "test.jsonl")
    with pytest.raises(DataError, match="--validation_file and --test_file go with --train_file"):
        xfer_nlp.run(mode="probe", **{**tiny_run, "test_file": str(folder / "test.jsonl"),
                                      "output_dir": str(tmp_path / "r0")})
    with pytest.raises(DataError, match="no train split for cross-validation"):
        xfer_nlp.evaluate(run.output_dir, dataset_name=str(folder), cv_folds=2, output_dir=str(tmp_path / "e4"))
    # a run still needs a train file, and says so
    with pytest.raises(DataError, match=r"has no train file \(train.jsonl, train.csv, ...\); it holds: test.jsonl, "
                                        r"validation.jsonl. Name the training file train.<ext>"):
        xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(folder), "output_dir": str(tmp_path / "r")})


def test_a_run_scored_on_its_own_data_is_cut_as_the_run_cut_it(tiny_run, tmp_path):
    """A compare cell's seed (3 here) or cross-validation fold, not evaluate's defaults: scored on the run's own
    one-file data, its export is scored on exactly the rows the run held out, never on rows it trained on; a flag
    that cuts the data otherwise is obeyed with a warning."""
    mine = write_jsonl(tmp_path / "mine.jsonl", make_rows(80, 12))

    def texts(folder, split):
        return sorted(r["text"] for r in read_rows(folder / "predictions.jsonl") if r["split"] == split)

    def trained_on(run):  # the training rows: every row of the file that the run did not score
        return {r["text"] for r in make_rows(80, 12)} - {r["text"] for r in read_rows(run / "predictions.jsonl")}

    run = xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(mine), "seed": 3})
    held = xfer_nlp.evaluate(run.output_dir, dataset_name=str(mine), output_dir=str(tmp_path / "held"))
    assert texts(held.output_dir, "validation") == texts(run.output_dir, "validation")
    assert held.metrics["validation"] == run.metrics["validation"]
    assert "the run's own data, cut as the run cut it (--seed 3, --validation_split_ratio 0.1)" in \
        held.results["data_notes"][-1]
    other = xfer_nlp.evaluate(run.output_dir, dataset_name=str(mine), seed=42, output_dir=str(tmp_path / "other"))
    assert set(texts(other.output_dir, "validation")) & trained_on(run.output_dir)  # what the warning is about
    log = (other.output_dir / "evaluate.log").read_text()
    assert "cut otherwise than the run cut it (--seed 42 where the run had 3)" in log
    # from Python, a RunConfig's own settings count as given too
    mine_cfg = RunConfig(dataset_name=str(mine), seed=5, output_dir=str(tmp_path / "cfg"))
    assert xfer_nlp.evaluate(run.output_dir, config=mine_cfg).results["split_sizes"] == {"validation": 8}
    assert "(--seed 5 where the run had 3)" in (tmp_path / "cfg" / "evaluate.log").read_text()

    cv = xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(mine), "cv_folds": 4, "cv_fold": 1,
                                       "output_dir": str(tmp_path / "cv")})
    fold = xfer_nlp.evaluate(cv.output_dir, dataset_name=str(mine), output_dir=str(tmp_path / "fold"))
    assert set(fold.results["split_sizes"]) == {"validation", "test"}
    for split in ("validation", "test"):
        assert texts(fold.output_dir, split) == texts(cv.output_dir, split)
        assert fold.metrics[split]["accuracy"] == cv.metrics[split]["accuracy"]
    assert "--cv_folds 4, --cv_fold 1" in fold.results["data_notes"][-1]
    with pytest.raises(ConfigError, match="--all_rows scores every row and --cv_folds one fold"):
        xfer_nlp.evaluate(cv.output_dir, dataset_name=str(mine), cv_folds=4, all_rows=True,
                          output_dir=str(tmp_path / "both"))
    every = xfer_nlp.evaluate(cv.output_dir, dataset_name=str(mine), all_rows=True, output_dir=str(tmp_path / "all"))
    assert every.results["split_sizes"] == {"validation": 80}
    assert "These are the rows the run trained on" in (every.output_dir / "evaluate.log").read_text()
    record = json.loads((cv.output_dir / "results.json").read_text())
    record["config"]["seed"] = "__import__('os')"  # nothing read from a model folder is trusted unchecked
    (cv.output_dir / "results.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"results.json' is damaged: its seed is not a number"):
        xfer_nlp.evaluate(cv.output_dir, dataset_name=str(mine), output_dir=str(tmp_path / "damaged"))
    record["config"].update(seed=cv.results["config"]["seed"], text_column=["text"])
    (cv.output_dir / "results.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"its text_column is not a column name, so the columns the run read"):
        xfer_nlp.evaluate(cv.output_dir, dataset_name=str(mine), output_dir=str(tmp_path / "damaged2"))


@pytest.mark.parametrize("case,words", [
    ("offline_name", "--metrics: could not load the evaluate module 'no_such_metric_xyz'"),
    # evaluate read `import datasets, evaluate` as a package named 'datasets,' and the message said the machine was
    # offline, though a file was given
    ("one_import_line", "one package a line: write `import a, b` as two lines"),
    ("watched", "--metric_for_best_model 'f1' is not among the computed metrics (accuracy, macro_f1, "
                "balanced_accuracy)"),
    ("no_metrics_watched", "--metric_for_best_model 'f1' is not a computed metric"),
    ("not_a_model", "is a folder but not a model (it has no config.json)"),
    ("labels", "The data's labels neg, pos are not among the model's"),
    ("two_models", "two models given: 'a' and --model 'b'. Give one."),
])
def test_bad_evaluation_settings_are_one_message(case, words, tiny_model_dir, tiny_data_dir, tmp_path):
    module = tmp_path / "balanced_accuracy.py"
    module.write_text(BALANCED)
    env = {**launch_env(), "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = [sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "probe", "--model_name_or_path",
           str(tiny_model_dir), "--dataset_name", str(tiny_data_dir), "--output_dir", str(tmp_path / "o"),
           "--max_seq_length", "32", "--feature_cache_dir", str(tmp_path / "f")]
    if case == "offline_name":
        argv = run + ["--metrics", "no_such_metric_xyz"]
    elif case == "one_import_line":
        joined = tmp_path / "joined_imports.py"
        joined.write_text(BALANCED.replace("import datasets\nimport evaluate\n", "import datasets, evaluate\n"))
        assert joined.read_text() != BALANCED
        argv = run + ["--metrics", str(joined)]
    elif case == "watched":
        argv = run + ["--metrics", str(module), "--metric_for_best_model", "f1"]
    elif case == "no_metrics_watched":
        argv = run + ["--metric_for_best_model", "f1"]
    elif case == "two_models":
        argv = [sys.executable, "-m", "xfer_nlp.cli", "evaluate", "a", "--model", "b", "--dataset_name", "sst2"]
    elif case == "not_a_model":
        argv = [sys.executable, "-m", "xfer_nlp.cli", "evaluate", str(tiny_data_dir), "--dataset_name",
                str(tiny_data_dir), "--output_dir", str(tmp_path / "e")]
    else:
        assert subprocess.run(run, capture_output=True, env=env, timeout=300).returncode == 0
        data = tmp_path / "named"
        write_jsonl(data / "train.jsonl", [{"text": r["text"], "label": "pos" if r["label"] else "neg"}
                                           for r in make_rows(20, 4)])
        argv = [sys.executable, "-m", "xfer_nlp.cli", "evaluate", str(tmp_path / "o"), "--dataset_name", str(data),
                "--output_dir", str(tmp_path / "e")]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert words in result.stderr, result.stderr[-2000:]
    if case == "one_import_line":
        assert "This machine is offline" not in result.stderr  # a file was given: no name to look up
    if case in ("offline_name", "watched"):
        assert "This machine is offline" in result.stderr or case == "watched"
        assert not (tmp_path / "o" / "results.json").exists()


def test_a_reading_beyond_the_model_s_positions_is_refused(tiny_run, tmp_path):
    """The model failed on the first text longer than its 128 positions, with a tensor-size traceback; a run
    refuses the same flag up front."""
    out = xfer_nlp.run(mode="probe", probe_c_grid="1", **tiny_run).output_dir  # the tiny BERT: 128 positions
    long = tmp_path / "long"
    write_jsonl(long / "train.jsonl", [{"text": " ".join(["good"] * 200), "label": 1},
                                       {"text": " ".join(["bad"] * 200), "label": 0}])
    args = dict(dataset_name=str(long), all_rows=True)
    with pytest.raises(xfer_nlp.ConfigError, match=r"--max_seq_length 129 is beyond what '.*' can read: its position "
                                                   r"embeddings cover 128 tokens\. Use --max_seq_length 128 or less\."):
        xfer_nlp.evaluate(out, max_seq_length=129, output_dir=str(tmp_path / "e1"), **args)
    scored = xfer_nlp.evaluate(out, max_seq_length=128, output_dir=str(tmp_path / "e2"), **args)
    assert scored.results["reading"]["max_length"] == 128


def test_predict_keeps_input_order_and_agrees_with_pipeline(tiny_run):
    from transformers import pipeline

    run = xfer_nlp.run(mode="finetune", num_train_epochs=1, **tiny_run)
    texts = [r["text"] for r in make_rows(50, 21)]
    texts = [t + " and" * (i % 7) for i, t in enumerate(texts)]  # mixed lengths: predict batches longest first
    rows = xfer_nlp.predict(run.output_dir, texts, batch_size=8)
    assert [r["text"] for r in rows] == texts
    reference = pipeline("text-classification", model=str(run.output_dir), top_k=None, device=-1)(texts, batch_size=8)
    for row, ref in zip(rows, reference):
        best = max(ref, key=lambda s: s["score"])
        assert row["label"] == best["label"]
        assert row["scores"] == pytest.approx({s["label"]: s["score"] for s in ref}, abs=1e-5)
    # bf16 autocast: the same texts in the same order, scores within bf16 rounding of fp32's.
    fast = xfer_nlp.predict(run.output_dir, texts, batch_size=8, precision="bf16")
    assert [r["text"] for r in fast] == texts
    for row, exact in zip(fast, rows):
        assert row["scores"] == pytest.approx(exact["scores"], abs=0.05) and row["scores"] != exact["scores"]
    with pytest.raises(xfer_nlp.ConfigError, match="precision 'half' is not one of fp32, bf16, auto"):
        xfer_nlp.predict(run.output_dir, texts, precision="half")


def test_a_class_the_kept_model_never_gets_right_is_warned_about(caplog):
    """Choosing on accuracy can keep a head that answers only the largest classes (sst5 at 100 examples); the run
    then says which classes it never gets right and names the fix. A model right on every class raises nothing."""
    from xfer_nlp.evaluation import warn_unpredicted
    from xfer_nlp.metrics import Scorer

    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    labels = np.array([0, 1, 1, 1, 2, 3, 3, 3, 4, 4])
    collapsed = np.array([1, 1, 1, 1, 1, 3, 3, 3, 3, 3])  # only the two largest classes answered
    with caplog.at_level("WARNING", logger="xfer_nlp"):
        warn_unpredicted({"validation": Scorer(5)(collapsed, labels)}, names, "accuracy")
    (record,) = caplog.records
    assert "'very negative', 'neutral', 'very positive' right (recall 0 for 3 of 5 classes; chosen on accuracy)" \
        in record.getMessage() and "--metric_for_best_model macro_f1" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="xfer_nlp"):
        warn_unpredicted({"validation": Scorer(5)(np.array([0, 1, 0, 1, 2, 3, 2, 3, 4, 0]), labels)}, names,
                         "accuracy")
    assert not caplog.records


# 65 to 145 s: matplotlib labels 10^2 alone, and so would 1, 2 and 5 x 10^k
@pytest.mark.parametrize("seconds,labels", [((65, 145), ["80", "100", "120", "140"]),
                                            ((3, 400), ["5", "10", "20", "50", "100", "200", "500"])])
def test_a_seconds_axis_is_labelled_plainly_and_more_than_once_within_a_decade(seconds, labels):
    from xfer_nlp.evaluation import plain_log_ticks, pyplot

    fig, ax = pyplot().subplots()
    ax.scatter(seconds, (0.8, 0.9))
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    shown = [t.get_text() for t in ax.xaxis.get_ticklabels() if low <= t.get_position()[0] <= high and t.get_text()]
    pyplot().close(fig)
    assert shown == labels
