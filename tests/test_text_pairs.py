"""Sentence-pair data (--text_pair_column): read as the tokenizer pairs two texts, in every mode, through the export
that pipeline() loads, predict, evaluate and the probe's feature cache."""

import json
import random
import subprocess
import sys

import pytest
from conftest import FILLER, data_folder, launch_env, make_rows, write_jsonl

import xfer_nlp
from xfer_nlp import ConfigError, DataError

PAIR = dict(text_column="premise", text_pair_column="hypothesis")


def pair_rows(n: int, seed: int) -> list[dict]:
    """The label is the polarity word of the second text; the first is filler. A model reading only the first text
    can do no better than chance, so accuracy well above it shows that the pair is read."""
    rng = random.Random(seed + 100)
    return [{"premise": " ".join(rng.sample(FILLER, 5)), "hypothesis": r["text"], "label": r["label"]}
            for r in make_rows(n, seed)]


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    return data_folder(tmp_path_factory, "pairs", train=pair_rows(160, 1), validation=pair_rows(48, 2))


@pytest.fixture(scope="module")
def probe_on_pairs(tiny_model_dir, pair_data, tmp_path_factory):
    """One probe run on the pair task, shared by the checks of what it leaves."""
    tmp = tmp_path_factory.mktemp("pair-probe")
    return xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(pair_data),
                        output_dir=str(tmp / "out"), max_seq_length=32, feature_cache_dir=str(tmp / "features"),
                        seed=0, **PAIR)


def predictions(run) -> list[dict]:
    return [json.loads(line) for line in (run.output_dir / "predictions.jsonl").read_text().splitlines()]


def test_the_tokenizer_pairs_the_texts_and_cuts_a_long_pair_as_pipeline_does(tiny_model_dir):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from xfer_nlp.batches import Reading, tokenize, tokenize_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts, pairs = ["the film", "the plot was dull and the acting was clumsy and " * 3], ["good", "the ending"]
    reading = Reading(16, pairs=True)
    rows = tokenize_rows(texts, tok, reading, pairs=pairs)
    table = tokenize(DatasetDict(s=Dataset.from_dict({"text": texts, "text_pair": pairs, "label": [0, 1]})), tok,
                     reading)["s"]
    expected = tok(texts, pairs, truncation=True, max_length=16)  # what pipeline({"text", "text_pair"}) reads
    for i in range(2):
        assert rows[i]["input_ids"] == table[i]["input_ids"] == expected["input_ids"][i]
        assert rows[i]["token_type_ids"] == table[i]["token_type_ids"] == expected["token_type_ids"][i]
    sep = tok.sep_token_id
    assert rows[0]["input_ids"][-2:] == [tok.convert_tokens_to_ids("good"), sep]
    assert rows[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]  # [CLS] the film [SEP] | good [SEP]
    assert len(rows[1]["input_ids"]) == 16 and rows[1]["input_ids"][-3:-1] == tok.convert_tokens_to_ids(["the", "ending"])
    with pytest.raises(ValueError, match="pairs"):  # a reading of pairs never reads single texts silently
        tokenize_rows(texts, tok, reading)


def test_a_pair_and_one_text_with_the_same_ids_are_cached_apart(tiny_model_dir):
    """A text holding a literal [SEP] has a pair's token ids; only its token types differ. The probe's feature
    cache must not serve one's features for the other."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from xfer_nlp.batches import Reading, rows_fingerprint, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    one = tokenize(DatasetDict(s=Dataset.from_dict({"text": ["the film [SEP] good"], "label": [1]})), tok,
                   Reading(16))["s"]
    two = tokenize(DatasetDict(s=Dataset.from_dict({"text": ["the film"], "text_pair": ["good"], "label": [1]})), tok,
                   Reading(16, pairs=True))["s"]
    assert one[0]["input_ids"] == two[0]["input_ids"] and one[0]["token_type_ids"] != two[0]["token_type_ids"]
    assert rows_fingerprint(one) != rows_fingerprint(two)


def test_the_probe_reads_both_texts_and_its_export_labels_pairs_as_the_run_did(probe_on_pairs, tiny_model_dir,
                                                                              pair_data, tmp_path):
    from transformers import pipeline

    run = probe_on_pairs
    assert run.metrics["validation"]["accuracy"] >= 0.85  # the label is in the second text only
    alone = xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(pair_data),
                         text_column="premise", output_dir=str(tmp_path / "alone"), max_seq_length=32, seed=0,
                         feature_cache_dir=str(tmp_path / "features"))
    assert alone.metrics["validation"]["accuracy"] <= 0.7  # the first text alone: chance
    assert run.results["reading"]["pairs"] is True
    assert "Reading texts: each text and its pair as one input of at most 32 tokens, a longer pair cut from the end " \
           "of its longer text (the training pairs' 90th-percentile length is" in (run.output_dir / "train.log").read_text()
    rows = predictions(run)
    assert rows[0]["text"] == pair_rows(48, 2)[0]["premise"] and rows[0]["text_pair"] == pair_rows(48, 2)[0]["hypothesis"]

    # Stock transformers, as the model card says: the pair as pipeline()'s dict.
    classifier = pipeline("text-classification", model=str(run.output_dir), truncation=True, max_length=32,
                          trust_remote_code=True)
    piped = classifier([{"text": r["text"], "text_pair": r["text_pair"]} for r in rows])
    assert [p["label"] for p in piped] == [r["predicted"] for r in rows]
    assert max(abs(p["score"] - r["score"]) for p, r in zip(piped, rows)) < 1e-5
    card = (run.output_dir / "README.md").read_text()
    assert '"text_pair"' in card and "reads each text and its pair as one input" in card

    # predict takes (text, text_pair) tuples or pipeline's dicts, and refuses single texts to a pair model
    by_tuple = xfer_nlp.predict(run.output_dir, [(r["text"], r["text_pair"]) for r in rows])
    assert [p["label"] for p in by_tuple] == [r["predicted"] for r in rows]
    assert by_tuple[3]["text_pair"] == rows[3]["text_pair"]
    assert xfer_nlp.predict(run.output_dir, {"text": rows[0]["text"], "text_pair": rows[0]["text_pair"]})[0][
        "label"] == rows[0]["predicted"]
    with pytest.raises(ConfigError, match="trained on text pairs"):
        xfer_nlp.predict(run.output_dir, [r["text"] for r in rows])
    with pytest.raises(ConfigError, match="Text 1 is a single text among pairs"):
        xfer_nlp.predict(run.output_dir, [(rows[0]["text"], rows[0]["text_pair"]), "good"])
    with pytest.raises(ConfigError, match=r"Text 0 of 1 \(counting from 0\) is \('a', None\)"):
        xfer_nlp.predict(run.output_dir, [("a", None)])
    with pytest.raises(ConfigError, match="trained on single texts, not pairs"):
        xfer_nlp.predict(alone.output_dir, [("the film", "good")])


def test_predict_and_evaluate_read_the_pair_column_of_a_file(probe_on_pairs, pair_data, tmp_path, tmp_path_factory):
    run, rows = probe_on_pairs, predictions(probe_on_pairs)
    cli = [sys.executable, "-m", "xfer_nlp.cli"]
    given = [*cli, "predict", "--model", str(run.output_dir), "--input", str(pair_data / "validation.jsonl"),
             "--text_column", "premise", "--text_pair_column", "hypothesis", "--output", str(tmp_path / "p.jsonl")]
    done = subprocess.run(given, capture_output=True, text=True, env=launch_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(w["text"], w["text_pair"], w["label"]) for w in written] == \
        [(r["text"], r["text_pair"], r["predicted"]) for r in rows]
    txt = subprocess.run([*cli, "predict", "--model", str(run.output_dir), "--input", str(tmp_path / "x.txt"),
                          "--text_pair_column", "hypothesis"], capture_output=True, text=True, env=launch_env(),
                         timeout=300)
    assert txt.returncode == 2 and "one text a line" in txt.stderr

    scored = xfer_nlp.evaluate(run.output_dir, dataset_name=str(pair_data), output_dir=str(tmp_path / "ev"), **PAIR)
    assert scored.metrics["validation"]["accuracy"] == run.metrics["validation"]["accuracy"]
    # On the run's own data its columns are the defaults; on other data nothing says which column is the pair.
    as_the_run = xfer_nlp.evaluate(run.output_dir, dataset_name=str(pair_data), output_dir=str(tmp_path / "ev2"))
    assert as_the_run.metrics == scored.metrics
    other = data_folder(tmp_path_factory, "other", train=pair_rows(40, 3), validation=pair_rows(48, 4))
    with pytest.raises(ConfigError, match="trained on text pairs \\(its run's --text_pair_column hypothesis\\); name"):
        xfer_nlp.evaluate(run.output_dir, dataset_name=str(other), text_column="premise",
                          output_dir=str(tmp_path / "ev3"))


@pytest.mark.parametrize("mode", ["finetune", "contrastive"])
def test_the_trained_modes_export_a_pair_model_that_pipeline_reads_as_the_run_did(mode, tiny_run, pair_data):
    from transformers import pipeline

    run = xfer_nlp.run(mode=mode, **{**tiny_run, "dataset_name": str(pair_data), "max_steps": 20}, **PAIR)
    rows = predictions(run)
    classifier = pipeline("text-classification", model=str(run.output_dir), truncation=True, max_length=32,
                          trust_remote_code=True)
    piped = classifier([{"text": r["text"], "text_pair": r["text_pair"]} for r in rows])
    assert [p["label"] for p in piped] == [r["predicted"] for r in rows]
    assert max(abs(p["score"] - r["score"]) for p, r in zip(piped, rows)) < 1e-5


@pytest.mark.parametrize("rows, flags, message", [
    ([{"premise": "a", "label": 1}], PAIR, "no column for --text_pair_column 'hypothesis'"),
    ([{"premise": "a", "hypothesis": 3, "label": 1}], PAIR, "text pair column 'hypothesis' of the train split"),
    ([{"premise": "a", "label": 1}], dict(text_column="premise", text_pair_column="premise"), "is the --text_column too"),
    ([{"premise": "a", "hypothesis": "b", "label": 1}], dict(PAIR, long_text="chunk"), "cut one text"),
    ([{"premise": "a", "hypothesis": "b", "label": 1}], dict(PAIR, truncation="head+tail"), "cut one text"),
], ids=["missing", "not-strings", "same-column", "chunk", "head+tail"])
def test_bad_pair_flags_and_data_are_refused_with_the_fix(rows, flags, message, tiny_run, tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", rows * 20)
    with pytest.raises((ConfigError, DataError), match=message):
        xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(tmp_path / "d")}, **flags)


def test_an_example_whose_pair_is_empty_is_dropped_and_counted(tiny_model_dir, tmp_path):
    from xfer_nlp.config import RunConfig
    from xfer_nlp.data import load_text_data

    rows = pair_rows(40, 5)
    rows[3]["hypothesis"], rows[7]["hypothesis"] = "  ", None
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "validation.jsonl", pair_rows(10, 6))
    data = load_text_data(RunConfig(dataset_name=str(tmp_path / "d"), **PAIR))
    assert len(data.splits["train"]) == 38 and data.splits["train"].column_names == ["text", "text_pair", "label"]
    assert "dropped 2 example(s) with an empty text or pair from train" in data.notes
    assert data.splits["train"][3]["text_pair"] == rows[4]["hypothesis"]
