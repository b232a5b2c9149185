"""Every data format loads; every bad input gives one clear error naming the problem and the fix."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, make_rows, write_jsonl

from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.data import iter_texts, load_text_data, stratified_subset
from xfer_nlp.errors import DataError


def load(dataset, **kw):
    return load_text_data(resolve(RunConfig(dataset_name=str(dataset), **kw)))


def parquet_bytes(columns) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue().to_pybytes()


def write_table(path, rows, sep):
    lines = [f"text{sep}label"] + [f"{r['text']}{sep}{r['label']}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_each_format_loads(tmp_path, fmt):
    rows = make_rows(40, 0)
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt in ("csv", "tsv"):
        write_table(path, rows, "," if fmt == "csv" else "\t")
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    data = load(path)
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 40
    assert data.splits["train"][0]["text"] in {r["text"] for r in rows}
    assert data.label_names == ("0", "1")
    assert list(iter_texts(path)) == [r["text"] for r in rows]  # predict --input reads the same file, streamed


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_compressed_text_file_reads_as_the_file_itself(tmp_path, compression):
    """reviews.jsonl.gz was refused for its extension, though datasets reads it; the checks read it decompressed
    (a TSV's quoting, UTF-8, a byte-order mark), predict --input streams it, and a folder's split files may be so."""
    import bz2
    import gzip
    import lzma

    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
    rows, more = make_rows(40, 0), make_rows(20, 1)
    plain = write_jsonl(tmp_path / "plain" / "train.jsonl", rows)
    write_jsonl(tmp_path / "plain" / "validation.jsonl", more)
    folder = tmp_path / "packed"
    folder.mkdir()
    for split in ("train", "validation"):
        with opener(folder / f"{split}.jsonl.{compression}", "wb") as f:
            f.write(b"\xef\xbb\xbf" + (tmp_path / "plain" / f"{split}.jsonl").read_bytes())  # a BOM, read past
    packed, unpacked = load(folder), load(plain.parent)
    for split in ("train", "validation"):
        assert packed.splits[split].to_list() == unpacked.splits[split].to_list()
    tsv = write_table(tmp_path / "glue.tsv", [{"text": '"Great" film, really', "label": 1}] + rows, "\t")
    with opener(tmp_path / f"glue.tsv.{compression}", "wb") as f:
        f.write(tsv.read_bytes())
    glue = load(tmp_path / f"glue.tsv.{compression}").splits
    assert '"Great" film, really' in glue["train"]["text"][:] + glue["validation"]["text"][:]  # quotes kept
    assert list(iter_texts(folder / f"train.jsonl.{compression}")) == [r["text"] for r in rows]
    with opener(tmp_path / f"texts.txt.{compression}", "wb") as f:
        f.write(b"good film\n\nbad film\n")
    assert list(iter_texts(tmp_path / f"texts.txt.{compression}")) == ["good film", "bad film"]
    # cut short (a download that stopped), or not compressed at all: one message, before datasets reads it
    whole = (folder / f"train.jsonl.{compression}").read_bytes()
    (tmp_path / f"cut.jsonl.{compression}").write_bytes(whole[: len(whole) // 2])
    (tmp_path / f"plain.jsonl.{compression}").write_bytes(plain.read_bytes())
    for name in ("cut", "plain"):
        with pytest.raises(DataError, match=rf"'.*{name}\.jsonl\.{compression}' cannot be decompressed as its name "
                                            rf"says \(\.{compression}\): .*Check that the file is whole"):
            load(tmp_path / f"{name}.jsonl.{compression}")


def test_a_compressed_parquet_or_an_unknown_format_inside_is_named(tmp_path):
    import gzip

    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(parquet_bytes({"text": ["a", "b"], "label": [0, 1]})))
    with pytest.raises(DataError, match="is a compressed Parquet file; Parquet compresses inside the file"):
        load(tmp_path / "t.parquet.gz")
    (tmp_path / "t.xlsx.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(DataError, match=r"has extension '\.xlsx', which xfer_nlp cannot read\. Use one of \.jsonl, "
                                        r"\.json, \.csv, \.tsv, \.parquet, the text ones also compressed \(\.gz, "
                                        r"\.bz2, \.xz\)"):
        load(tmp_path / "t.xlsx.gz")


def test_a_tsv_reads_its_texts_as_written_whether_it_quotes_or_not(tmp_path, caplog):
    """A TSV that quotes nothing (GLUE's) had its texts' leading quotes read as CSV quoting: '"Great" film, really'
    reached the model as 'Great film, really'. One written by pandas, which quotes, reads as before."""
    import pandas as pd

    texts = ['"Great" film, really', "a fine film", 'the "worst" thing', "dull", '"Superb" acting', "flat"] * 4
    labels = [1, 1, 0, 0, 1, 0] * 4
    write_table(tmp_path / "glue.tsv", [{"text": t, "label": y} for t, y in zip(texts, labels)], "\t")
    with caplog.at_level("INFO", logger="xfer_nlp"):
        data = load(tmp_path / "glue.tsv")
    assert sorted({*data.splits["train"]["text"], *data.splits["validation"]["text"]}) == sorted(set(texts))
    assert "glue.tsv' is read without CSV quoting: 8 text(s) begin with a quote" in caplog.text
    assert list(iter_texts(tmp_path / "glue.tsv")) == texts  # predict --input reads it so too
    quoted = texts + ["two\nlines", "a\ttab"]
    pd.DataFrame({"text": quoted, "label": labels + [0, 1]}).to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    assert '"""Great"" film, really"' in (tmp_path / "pandas.tsv").read_text()
    assert list(iter_texts(tmp_path / "pandas.tsv")) == quoted
    data = load(tmp_path / "pandas.tsv")
    assert sorted({*data.splits["train"]["text"], *data.splits["validation"]["text"]}) == sorted(set(quoted))


def test_folder_with_splits(tiny_data_dir):
    data = load(tiny_data_dir)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 160, "validation": 48, "test": 40}


def test_a_data_file_the_folder_does_not_read_is_named(tmp_path, caplog):
    """A validation file named otherwise was passed over without a word, and a tenth of train held out instead."""
    write_jsonl(tmp_path / "train.jsonl", make_rows(40, 0))
    write_jsonl(tmp_path / "validation_set.jsonl", make_rows(10, 1))
    (tmp_path / "notes.txt").write_text("not data\n")  # not a data format: not named
    data = load(tmp_path)
    assert any("held out" in n for n in data.notes)
    assert (f"Data file(s) in '{tmp_path}' not read: validation_set.jsonl. A split is read from a file named "
            "train.<ext>, validation/valid/dev/val.<ext>, test.<ext>.") in caplog.text


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data or XFER_NLP_DATA_DIR")
@pytest.mark.parametrize("name,splits,labels", [("sst2", {"train": 6920, "validation": 872}, 2),
                                                ("sst5", {"train": 8544, "validation": 1101, "test": 2210}, 5),
                                                ("trec", {"train": 4907, "validation": 545, "test": 500}, 6)])
def test_registry_sets_from_shared_data(name, splits, labels):
    data = load(name)
    assert {k: len(v) for k, v in data.splits.items()} == splits
    assert len(data.label_names) == labels
    assert data.source.endswith(name)


def test_no_validation_split_holds_out_stratified_tenth(tmp_path):
    rows = make_rows(200, 0)
    data = load(write_jsonl(tmp_path / "train.jsonl", rows))
    val = data.splits["validation"]["label"]
    assert len(val) == 20 and sum(val) == 10
    assert "held out" in data.notes[0]


def test_max_train_samples_is_stratified_seeded_and_nested(tiny_data_dir):
    small = load(tiny_data_dir, max_train_samples=20)
    big = load(tiny_data_dir, max_train_samples=60)
    assert sum(small.splits["train"]["label"]) == 10
    assert set(small.splits["train"]["text"]) <= set(big.splits["train"]["text"])
    assert load(tiny_data_dir, max_train_samples=20).splits["train"]["text"] == small.splits["train"]["text"]
    assert load(tiny_data_dir, max_train_samples=20, seed=1).splits["train"]["text"] != small.splits["train"]["text"]


def test_stratified_subset_keeps_rare_classes_and_nests():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    for n in (5, 10, 50):
        chosen = stratified_subset(labels, n, seed=3)
        assert set(labels[chosen]) == {0, 1, 2}
    assert set(stratified_subset(labels, 10, 3)) <= set(stratified_subset(labels, 50, 3))


@pytest.mark.parametrize("at_least", [1, 2])
def test_stratified_subset_nests_at_every_size(at_least):
    # Shares like trec's (one class 1.6%): largest remainders took a seat back from a class at some sizes (trec
    # 86 -> 87), so the smaller subset was not inside the larger one.
    labels = np.repeat(np.arange(6), [1162, 1250, 86, 1223, 835, 896])
    previous = set()
    for n in range(6, 400):
        chosen = stratified_subset(labels, n, seed=0, at_least=at_least)
        assert len(chosen) == n and previous <= set(chosen), n
        counts = np.bincount(labels[chosen], minlength=6)
        assert counts.min() >= (at_least if n >= 6 * at_least else 1)
        share = n * np.bincount(labels) / len(labels)
        assert np.all(np.abs(counts - share)[counts > at_least] < 1.5), (n, counts, share)  # proportional beyond it
        previous = set(chosen)


def test_training_subset_has_two_of_each_class_where_it_can(tmp_path):
    rows = [{"text": f"text {i}", "label": 2 if i < 3 else i % 2} for i in range(300)]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows), max_train_samples=16)
    assert sorted(data.splits["train"]["label"]).count(2) == 2  # 0.16 of a seat in proportion


def test_string_labels_mapped_sorted(tmp_path):
    rows = [{"text": r["text"], "label": "pos" if r["label"] else "neg"} for r in make_rows(40, 0)]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.label_names == ("neg", "pos")
    assert set(data.splits["train"]["label"]) == {0, 1}


def test_negative_ids_are_classes_but_a_class_label_s_minus_one_is_no_label(tmp_path, caplog):
    """-1/0/1 (and -1/1) is how many sentiment files write negative/neutral/positive: it was refused, with the advice
    to remove the -1 rows, that is the negative class. Only a ClassLabel column (datasets' typed labels) uses -1 for
    a row without a label; there it is still refused, naming the rows."""
    from datasets import ClassLabel, Dataset, Features, Value

    rows = [{"text": r["text"], "label": i % 3 - 1} for i, r in enumerate(make_rows(60, 0))]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.label_names == ("-1", "0", "1")
    mapped = {(text, label) for text, label in zip(data.splits["train"]["text"], data.splits["train"]["label"])}
    assert mapped <= {(r["text"], r["label"] + 1) for r in rows}
    assert "Label -1 is taken as a class" in caplog.text
    typed = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]},
                              features=Features({"text": Value("string"),
                                                 "label": ClassLabel(names=["neg", "neu", "pos"])}))
    folder = tmp_path / "typed"
    folder.mkdir()
    typed.to_parquet(folder / "train.parquet")
    with pytest.raises(DataError, match=r"20 row\(s\) of train have the label -1, which a ClassLabel column \(this "
                                        r"one names neg, neu, pos\) uses for a row without a label"):
        load(folder)
    # the same file without those rows: its classes are named as its ClassLabel names them (they were "0", "1"),
    # though train lacks one of them
    typed.filter(lambda row: row["label"] >= 0).to_parquet(folder / "train.parquet")
    assert load(folder).label_names == ("neg", "neu")


def test_noncontiguous_ids_are_remapped_with_names_kept(tmp_path):
    rows = [{"text": r["text"], "label": 5 if r["label"] else 2} for r in make_rows(40, 0)]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.label_names == ("2", "5")
    assert any("not 0..1" in n for n in data.notes)


def test_empty_texts_dropped_with_count(tmp_path):
    rows = make_rows(40, 0) + [{"text": "   ", "label": 0}, {"text": "", "label": 1}]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert any("dropped 2 empty" in n for n in data.notes)


@pytest.mark.parametrize("rows,message", [
    ([{"text": "a", "label": 0.5}, {"text": "b", "label": 1.0}], "fractional"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": 1}], "single class"),
    ([{"text": " ", "label": 1}, {"text": "", "label": 0}], "empty or whitespace"),
    ([{"text": "a", "label": None}, {"text": "b", "label": 1}], r"no label \(null, or an empty cell\): \d+ of \d+ in train"),
    # json writes float('nan') and float('inf') as NaN and Infinity, which JSON readers take back as floats
    ([{"text": "a", "label": float("nan")}, {"text": "b", "label": 1}], "the label nan, which is not a class"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": float("inf")}], "the label inf, which is not a class"),
])
def test_bad_labels_and_texts(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load(write_jsonl(tmp_path / "d.jsonl", rows * 10))


def test_datasets_names_each_split_file_it_reads_by_its_split(tmp_path, capfd):
    """datasets' progress bar said "Generating train split" while it read a validation or test file."""
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        write_jsonl(tmp_path / f"{split}.jsonl", make_rows(20, seed))
    data = load(tmp_path)
    assert set(data.splits) == {"train", "validation", "test"}
    said = capfd.readouterr().err
    assert all(f"Generating {split} split" in said for split in ("train", "validation", "test")), said[-500:]


def test_label_unseen_in_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_rows(20, 0))
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "x", "label": 7}] + make_rows(5, 1))
    with pytest.raises(DataError, match=r"label\(s\) \[7\] that never occur in train"):
        load(tmp_path)


@pytest.mark.parametrize("train_label,validation_label,message", [
    # names in train and numbers in validation crashed with an AttributeError
    (lambda r: ["neg", "pos"][r["label"]], lambda r: r["label"], r"mixes types \(train: str; validation: int\)"),
    # a fractional validation label beside float ids in train was truncated to a class
    (lambda r: float(r["label"]), lambda r: 1.5, r"fractional numbers \(e.g. 1.5 in validation\)"),
], ids=["names-then-numbers", "fractional-in-validation"])
def test_every_split_s_label_types_are_checked(tmp_path, train_label, validation_label, message):
    write_jsonl(tmp_path / "train.jsonl", [{**r, "label": train_label(r)} for r in make_rows(20, 0)])
    validation = make_rows(5, 1)
    validation[4]["label"] = validation_label(validation[4])
    write_jsonl(tmp_path / "validation.jsonl", validation)
    with pytest.raises(DataError, match=message):
        load(tmp_path)


def test_list_or_record_labels_are_named_as_such_and_true_false_labels_keep_their_names(tmp_path):
    """A list label (multi-label data) was said to 'mix types (train: list)'; true/false labels were named 0 and 1."""
    for label, said in (([1], r"holds lists \(e.g. \[1\]\), not one class per text"),
                        ({"y": 1}, r'holds dicts \(e.g. \{"y": 1\}\), not one class per text')):
        rows = [{**r, "label": label} for r in make_rows(20, 0)]
        with pytest.raises(DataError, match=said + ": a label is a class id .* train one classifier per label."):
            load(write_jsonl(tmp_path / "odd.jsonl", rows))
    rows = [{**r, "label": bool(r["label"])} for r in make_rows(20, 0)]
    data = load(write_jsonl(tmp_path / "bool.jsonl", rows))
    assert data.label_names == ("False", "True")
    given = {}
    for r in rows:
        given.setdefault(r["text"], set()).add(int(r["label"]))  # False is id 0, True id 1
    assert all(y in given[t] for t, y in zip(data.splits["train"]["text"], data.splits["train"]["label"]))


def test_missing_column_lists_existing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": c, "label": i % 2} for i, c in enumerate("abcd")])
    with pytest.raises(DataError, match="Its columns are: sentence, label") as e:
        load(path)
    assert "--text_column" in str(e.value)
    assert len(load(path, text_column="sentence", validation_split_ratio=0.5).splits["train"]) == 2


def test_too_small_to_hold_out_validation(tmp_path):
    with pytest.raises(DataError, match="too few examples"):
        load(write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]))


def test_evaluation_texts_also_in_train_are_counted_and_said(tmp_path):
    rows = make_rows(40, 0)
    write_jsonl(tmp_path / "train.jsonl", rows)
    repeats = [{"text": "  " + rows[0]["text"].upper() + " ", "label": 0}, {"text": rows[5]["text"], "label": 1}]
    write_jsonl(tmp_path / "validation.jsonl", repeats + make_rows(8, 1))
    write_jsonl(tmp_path / "test.jsonl", make_rows(6, 2))
    notes = load(tmp_path).notes
    said = [n for n in notes if "also occur in train" in n]
    assert len(said) == 1 and said[0].startswith("2 of 10 validation texts also occur in train (ignoring case")
    assert not any("test texts" in n for n in notes)


def test_hold_out_never_takes_a_class_out_of_train(tmp_path):
    """A class of one example: the stratified hold-out gives validation its only one, and training would never see
    the class; refused by name, where the data had kept it silently out of train."""
    rows = make_rows(60, 0) + [{"text": "so-so", "label": 2}]
    with pytest.raises(DataError, match=r"Too few examples of '2' \(1 in all\) to hold out a validation split"):
        load(write_jsonl(tmp_path / "d.jsonl", rows))
    data = load(write_jsonl(tmp_path / "e.jsonl", rows + [{"text": "fine, I guess", "label": 2}]))
    assert set(data.splits["train"]["label"]) == set(data.splits["validation"]["label"]) == {0, 1, 2}


@pytest.mark.parametrize("name,content,message", [
    ("nope.jsonl", None, "does not exist"),
    ("e.jsonl", b"", "is empty"),
    ("w.jsonl", b"  \n\n", "only whitespace"),
    ("b.jsonl", b'{"text": "caf\xe9", "label": 0}\n', "not UTF-8: byte 0xe9 on line 1"),
    ("c.jsonl", b"text,label\nhello,1\n", "does not start with a JSON"),
    ("x.parquet", b"text,label\n", "not a Parquet file"),
    ("d.xlsx", b"x", "cannot read"),
    ("broken.jsonl", b'{"text": "a", "label": 0}\n{"text": \n', "Could not read"),
    # no rows: said as that, where datasets' "Instruction 'train' corresponds to no data" was passed on
    ("header.csv", b"text,label\n", r"has no rows \(only its header line\)"),
    ("header.tsv", b"text\tlabel\n\n", r"has no rows \(only its header line\)"),
    ("list.json", b"[]\n", "has no rows. Put labelled examples in it"),
    ("table.parquet", parquet_bytes({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}),
     "has no rows. Put labelled examples in it"),
])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load(path)


def test_a_bad_byte_past_the_first_block_names_its_line(tmp_path):
    # The check reads 16 MiB blocks; the bad byte sits in the second, after an "é" that the block boundary cuts.
    row = ('{"text": "' + "é" * 60 + '", "label": 0}\n').encode()  # 145 bytes; its é's start at byte 10
    pad = ((1 << 24) - 36) % len(row)  # a first row of 25 + pad bytes: the boundary falls 11 bytes into a row
    data = ('{"text": "' + "a" * pad + '", "label": 1}\n').encode() + row * ((1 << 24) // len(row) + 10)
    assert data[(1 << 24) - 1:(1 << 24) + 1] == "é".encode()  # the boundary falls inside a character
    path = tmp_path / "big.jsonl"
    path.write_bytes(data + b'{"text": "caf\xe9", "label": 1}\n')
    bad_line = data.count(b"\n") + 1
    with pytest.raises(DataError, match=f"byte 0xe9 on line {bad_line} cannot"):
        load(path)


def test_texts_to_label_stream_from_a_file_a_block_at_a_time(tmp_path):
    rows = [{"id": i, "review": f"text number {i}"} for i in range(20_000)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    texts = iter_texts(path, "review")
    assert next(texts) == "text number 0" and list(texts)[-1] == "text number 19999"
    with pytest.raises(DataError, match="no column 'text'; its columns are id, review"):
        iter_texts(path)  # refused before the first text
    broken = tmp_path / "broken.jsonl"  # a malformed row past datasets' first 10 MB block: the same message there
    broken.write_text(path.read_text() * 30 + '{"review": \n')
    texts = iter_texts(broken, "review")
    assert next(texts) == "text number 0"
    with pytest.raises(DataError, match="Could not read .* as json"):
        list(texts)


def test_a_text_file_to_label_is_read_as_utf8_lines_and_a_stray_byte_is_named_with_its_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("a film\r\n\n  \nun caf\u00e9 \u00e9l\u00e9gant\n".encode() + b"un caf\xe9\n")
    texts = iter_texts(path)
    assert [next(texts), next(texts)] == ["a film", "un caf\u00e9 \u00e9l\u00e9gant"]  # blank lines skipped
    with pytest.raises(DataError, match=r"in.txt' is not UTF-8: byte 0xe9 on line 5 cannot be decoded"):
        next(texts)


def test_folder_without_train_file(tmp_path):
    write_jsonl(tmp_path / "dev.jsonl", make_rows(4, 0))
    with pytest.raises(DataError, match="no train file"):
        load(tmp_path)


def test_a_train_file_that_is_a_folder_is_named_and_a_dataset_name_it_replaces_is_said(tiny_data_dir, caplog):
    """A folder given as --train_file was said not to exist; a --dataset_name beside --train_file went unread
    without a word."""
    with pytest.raises(DataError, match=f"--train_file '{tiny_data_dir}' is a folder. Pass a data file .*, or give "
                                        "a folder of train/validation/test files as --dataset_name."):
        load_text_data(resolve(RunConfig(train_file=str(tiny_data_dir))))
    with caplog.at_level("WARNING", logger="xfer_nlp"):
        data = load("mr", train_file=str(tiny_data_dir / "train.jsonl"))
    assert "--train_file replaces --dataset_name: 'mr' is not read." in caplog.text
    assert data.source == str(tiny_data_dir / "train.jsonl")


def test_a_registry_set_not_found_names_the_folder_looked_for(tmp_path):
    """It said 'looked in' the data root, also where the root was no folder at all."""
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"Dataset 'mr' has no local copy \(looked for {nowhere}/mr; {nowhere} is not "
                                        r"a folder\) and could not be loaded from the Hub"):  # the suite runs offline
        load("mr", data_dir=str(nowhere))
    with pytest.raises(DataError, match=rf"\(looked for {tmp_path}/mr\) and could not"):
        load("mr", data_dir=str(tmp_path))


def test_unknown_dataset_name_suggests_nearest():
    with pytest.raises(DataError, match="did you mean 'sst2'"):
        load("sts2")


def test_max_train_samples_larger_than_data(tiny_data_dir):
    with pytest.raises(DataError, match="larger than the 160 training examples"):
        load(tiny_data_dir, max_train_samples=10_000)


def test_cross_validation_folds_are_stratified_balanced_and_one_partition():
    from xfer_nlp.data import cv_folds

    labels = np.array([0] * 53 + [1] * 31 + [2] * 7)
    folds = cv_folds(labels, 5)
    assert np.array_equal(folds, cv_folds(labels, 5))  # fixed: the same for every seed and mode
    sizes = np.bincount(folds, minlength=5)
    assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
    for c, n in zip(*np.unique(labels, return_counts=True)):  # each fold holds its share of every class
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n


def test_each_fold_is_the_test_split_once_and_never_trained_on(tmp_path):
    rows = [{"text": f"{r['text']} number {i}", "label": r["label"]} for i, r in enumerate(make_rows(200, 4))]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    tested = []
    for fold in range(4):
        data = load(path, cv_folds=4, cv_fold=fold, seed=fold)  # the seed moves the validation hold-out only
        split = {s: set(data.splits[s]["text"]) for s in ("train", "validation", "test")}
        assert not split["test"] & (split["train"] | split["validation"])
        assert sum(map(len, split.values())) == 200 and len(split["test"]) == 50
        assert any(n.startswith(f"cross-validation: fold {fold} of folds 0-3") for n in data.notes)
        tested += data.splits["test"]["text"]
    assert sorted(tested) == sorted(r["text"] for r in rows)
    assert set(load(path, cv_folds=4, cv_fold=2, seed=7).splits["test"]["text"]) == \
        set(load(path, cv_folds=4, cv_fold=2, seed=0).splits["test"]["text"])


def test_cross_validation_refusals(tmp_path, tiny_data_dir):
    from xfer_nlp.errors import ConfigError

    with pytest.raises(DataError, match="has a test split of its own; cross-validation \\(--cv_folds; compare's --folds\\) makes one"):
        load(tiny_data_dir, cv_folds=5)
    rows = make_rows(40, 0) + [{"text": "a rare one", "label": 2}, {"text": "another rare one", "label": 2}]
    with pytest.raises(DataError, match="Class\\(es\\) '2' \\(2\\) have fewer examples than --cv_folds 3"):
        load(write_jsonl(tmp_path / "rare.jsonl", rows), cv_folds=3)
    with pytest.raises(ConfigError, match="--cv_fold must be between 0 and 4 \\(--cv_folds 5\\), got 5"):
        load(tiny_data_dir, cv_folds=5, cv_fold=5)
    with pytest.raises(ConfigError, match="--cv_folds must be at least 2"):
        load(tiny_data_dir, cv_folds=1)
    with pytest.raises(ConfigError, match="--cv_fold needs --cv_folds"):
        load(tiny_data_dir, cv_fold=1)
