"""Long texts: which tokens head, tail and head+tail keep; windows that cover a text; the run's reading saved and
applied by predict and evaluate; bad settings as one message."""

import json
import random

import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, data_folder
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, BatchEncoding

import xfer_nlp
from xfer_nlp.batches import Reading, pieces, tokenize
from xfer_nlp.errors import ConfigError


def long_rows(n: int, seed: int, words: int = 60) -> list[dict]:
    """Reviews of `words` words whose polarity word sits in the last five: head truncation misses it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        body = [rng.choice(FILLER) for _ in range(words - 5)]
        tail = [rng.choice(FILLER) for _ in range(4)] + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(tail)
        rows.append({"text": " ".join(body + tail), "label": label})
    return rows


@pytest.fixture(scope="module")
def long_data_dir(tmp_path_factory):
    return data_folder(tmp_path_factory, "long-data", train=long_rows(64, 1), validation=long_rows(24, 2))


def ids_of(tokenizer, reading, text):
    ds = tokenize(DatasetDict(s=Dataset.from_dict({"text": [text], "label": [0]})), tokenizer, reading)["s"]
    return ds["input_ids"]


def test_head_tail_and_head_plus_tail_keep_exactly_the_expected_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = [FILLER[i % len(FILLER)] for i in range(50)]
    text = " ".join(words)
    content = tok(text, add_special_tokens=False)["input_ids"]
    assert len(content) == 50  # one token a word: the expectation below is by word
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert ids_of(tok, Reading(16, "head+tail", 4), text) == [[cls, *content[:4], *content[-10:], sep]]
    assert ids_of(tok, Reading(16, "tail"), text) == [[cls, *content[-14:], sep]]
    head = ids_of(tok, Reading(16, "head"), text)
    assert head == [[cls, *content[:14], sep]] == [tok(text, truncation=True, max_length=16)["input_ids"]]
    assert ids_of(tok, Reading(64, "head+tail", 4), text) == [[cls, *content, sep]]  # a text that fits is whole
    # token_type_ids and attention_mask are cut alike
    ds = tokenize(DatasetDict(s=Dataset.from_dict({"text": [text], "label": [1]})), tok, Reading(16, "head+tail", 4))["s"]
    assert ds["attention_mask"] == [[1] * 16] and ds["token_type_ids"] == [[0] * 16] and ds["doc"] == [0]



class NoEncodings:
    """A tokenizer that returns plain ids without the Rust encodings (as a tokenizer without the tokenizers
    backend does), so tokenize() must tell long texts by tokenising the ones that fill the window again."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return BatchEncoding(dict(self.tokenizer(*args, **kwargs)))


def test_head_truncation_tells_long_texts_in_one_pass_or_by_tokenising_again(tiny_model_dir, caplog):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # 5, 16 (fills the window exactly: not long), 17 and 42 ids with the specials
    texts = [" ".join(FILLER[i % len(FILLER)] for i in range(n)) for n in (3, 14, 15, 40)]
    assert [len(tok(t)["input_ids"]) for t in texts] == [5, 16, 17, 42]
    data = DatasetDict(s=Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1]}))
    expected = [tok(t, truncation=True, max_length=16)["input_ids"] for t in texts]
    assert tok(texts, truncation=True, max_length=16).encodings is not None  # the one-pass path is the one tested
    for tokenizer in (tok, NoEncodings(tok)):
        for fingerprint in (None, "a-name"):  # an in-memory split named by the caller (predict) reads the same
            caplog.clear()
            with caplog.at_level("WARNING", logger="xfer_nlp.batches"):
                ds = tokenize(data, tokenizer, Reading(16), fingerprint=fingerprint)["s"]
            assert ds["input_ids"] == expected and ds["doc"] == [0, 1, 2, 3] and ds["labels"] == [0, 1, 0, 1]
            assert "2 of 4 s texts are longer than --max_seq_length 16 tokens" in caplog.text  # not the one of 16
@pytest.mark.parametrize("length,window,stride", [(50, 16, 7), (50, 16, 14), (15, 16, 3), (17, 16, 1), (300, 34, 16)])
def test_windows_cover_every_token_once_per_stride(length, window, stride):
    reading = Reading(window, chunk_stride=stride)
    windows = pieces(length, (1, 1), reading)
    content = length - 2
    if length <= window:
        assert windows == [list(range(length))]
        return
    budget = window - 2
    starts = [w[1] - 1 for w in windows]
    assert starts[:-1] == list(range(0, content - budget, stride)) and starts[-1] == content - budget
    for w in windows:
        assert len(w) == window and w[0] == 0 and w[-1] == length - 1  # [CLS] ... [SEP] in every window
        assert w[1:-1] == list(range(w[1], w[1] + budget))  # contiguous text
    covered = {i for w in windows for i in w[1:-1]}
    assert covered == set(range(1, length - 1))  # every text token read


def test_auto_reads_long_training_texts_head_plus_tail_and_predict_applies_it(tiny_run, long_data_dir):
    run = xfer_nlp.run(mode="probe", **{**tiny_run, "dataset_name": str(long_data_dir)})
    reading = run.results["reading"]
    assert reading["truncation"] == "head+tail" and reading["head_tokens"] == 8 and reading["train_p90_tokens"] > 32
    log = (run.output_dir / "train.log").read_text()
    assert "Reading texts: the first 8 and the last tokens, 32 in all" in log and "--truncation auto" in log
    assert "24 of 24 validation texts are longer than --max_seq_length 32 tokens" in log
    assert "The training texts are long and the model reads 32 tokens" in log and "--max_seq_length 512" in log
    rows = [json.loads(x) for x in (run.output_dir / "predictions.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows if r["split"] == "validation"]
    applied = xfer_nlp.predict(run.output_dir, texts)
    for r, p in zip(rows, applied):
        assert p["scores"] == pytest.approx(r["scores"], abs=1e-5)
    assert "xfer_nlp.predict(MODEL, texts)" in (run.output_dir / "README.md").read_text()  # the card says so
    # Without the run's record the export reads as pipeline() does (the head), and scores differ.
    results = run.output_dir / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "reading": None}))
    plain = xfer_nlp.predict(run.output_dir, texts)
    assert any(abs(a["score"] - b["score"]) > 1e-4 for a, b in zip(plain, applied))


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_chunked_reading_trains_evaluates_and_predicts_on_windows(mode, tiny_run, long_data_dir):
    run = xfer_nlp.run(mode=mode, long_text="chunk", chunk_stride=10, num_train_epochs=1,
                       **{**tiny_run, "dataset_name": str(long_data_dir)})
    assert run.results["reading"]["chunk_stride"] == 10
    assert run.results["split_sizes"] == {"train": 64, "validation": 24}  # texts, not windows
    rows = [json.loads(x) for x in (run.output_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    applied = xfer_nlp.predict(run.output_dir, [r["text"] for r in rows])
    assert [p["label"] for p in applied] == [r["predicted"] for r in rows]
    for r, p in zip(rows, applied):
        assert p["scores"] == pytest.approx(r["scores"], abs=1e-5)
    # The text's logits are the mean of its windows' logits, computed here by hand for the first text.
    from transformers import AutoModelForSequenceClassification

    tok = AutoTokenizer.from_pretrained(run.output_dir)
    model = AutoModelForSequenceClassification.from_pretrained(run.output_dir).eval()
    windows = ids_of(tok, Reading(32, chunk_stride=10), rows[0]["text"])
    assert len(windows) > 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(windows), attention_mask=torch.ones(len(windows), 32,
                                                                                  dtype=torch.long)).logits.mean(0)
    expected = torch.softmax(logits, -1).tolist()
    assert list(applied[0]["scores"].values()) == pytest.approx(expected, abs=1e-5)


def test_a_very_long_text_is_read_in_bounded_windows(tiny_run, tiny_model_dir):
    run = xfer_nlp.run(mode="probe", long_text="chunk", **tiny_run)
    text = " ".join(random.Random(0).choice(FILLER) for _ in range(10_000))
    [row] = xfer_nlp.predict(run.output_dir, text)
    assert row["text"] == text and sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("overrides,words", [
    ({"head_tokens": 32}, "--head_tokens 32 leaves no room for the end of the text within --max_seq_length 32"),
    ({"long_text": "chunk", "chunk_stride": 0}, "--chunk_stride must be between 1 and the window's text tokens"),
    ({"long_text": "chunk", "chunk_stride": 40}, "--chunk_stride must be between 1 and the window's text tokens"),
    ({"chunk_stride": 8}, "--chunk_stride applies to --long_text chunk only"),
    ({"max_seq_length": 4096}, "--max_seq_length 4096 is beyond what"),
])
def test_bad_reading_settings_are_one_message(overrides, words, tiny_run):
    with pytest.raises(ConfigError, match=None) as e:
        xfer_nlp.run(mode="probe", **{**tiny_run, **overrides})
    assert words in str(e.value)


@pytest.mark.parametrize("reading", [Reading(16), Reading(16, "tail"), Reading(16, "head+tail", 4),
                                     Reading(16, chunk_stride=7)], ids=["head", "tail", "head+tail", "windows"])
def test_rows_in_lists_are_the_rows_of_the_arrow_table(reading, tiny_model_dir, caplog):
    """predict's small calls skip datasets (tokenize_rows); the rows and the long-text warning must be the same."""
    from xfer_nlp.batches import tokenize_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [" ".join(FILLER[i % len(FILLER)] for i in range(n)) for n in (3, 14, 15, 40)]
    with caplog.at_level("WARNING", logger="xfer_nlp.batches"):
        table = tokenize(DatasetDict(predict=Dataset.from_dict({"text": texts, "label": [0] * 4})), tok,
                         reading)["predict"]
        warned = caplog.text
        caplog.clear()
        rows = tokenize_rows(texts, tok, reading)
    assert rows == table.to_list()
    assert len(rows) == (len(texts) + 5 if reading.chunk_stride else len(texts))  # windows: 2 and 5 for the long two
    assert caplog.text == warned and "2 of 4 predict texts are longer" in warned
