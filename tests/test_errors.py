"""User mistakes end in one clear message before any training; malformed data never crashes the library."""

import os
import re
import shutil
import string

import pytest
from conftest import make_rows, write_jsonl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import xfer_nlp
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.data import load_text_data


def _drop_weights(folder):
    (folder / "model.safetensors").unlink()


def _pickle_weights(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _drop_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


@pytest.mark.parametrize("damage,message", [
    (_drop_weights, "no \\*.safetensors weights"),
    (_pickle_weights, "pickle weights, .bin, which xfer_nlp does not load"),
    (_drop_tokenizer, "no tokenizer files"),
])
def test_broken_model_folder(tiny_model_dir, tiny_data_dir, tmp_path, damage, message):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    damage(broken)
    with pytest.raises(xfer_nlp.ConfigError, match=message):
        xfer_nlp.run(mode="probe", model_name_or_path=str(broken), dataset_name=str(tiny_data_dir),
                     output_dir=str(tmp_path / "o"))


def test_missing_model_folder(tiny_data_dir, tmp_path):
    """A path that is not there was said to be "not a folder" by run, and read as a Hub id by predict (one slash:
    huggingface_hub's "Repo id must use alphanumeric chars")."""
    with pytest.raises(xfer_nlp.ConfigError, match=f"--model_name_or_path '{tmp_path / 'nowhere'}' does not exist."):
        xfer_nlp.run(mode="probe", model_name_or_path=str(tmp_path / "nowhere"), dataset_name=str(tiny_data_dir),
                     output_dir=str(tmp_path / "o"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(xfer_nlp.ConfigError, match="a-file' is not a folder"):
        xfer_nlp.run(mode="probe", model_name_or_path=str(tmp_path / "a-file"), dataset_name=str(tiny_data_dir),
                     output_dir=str(tmp_path / "o"))
    for path in ("/nowhere", "./nowhere", "~/nowhere-at-all"):  # ~ is named as it expands
        with pytest.raises(xfer_nlp.ConfigError, match=f"--model '{os.path.expanduser(path)}' does not exist. Check "
                                                       r"the path, or give a Hub id \(user/name\)."):
            xfer_nlp.predict(path, ["a dull film"])


def test_a_hub_id_neither_cached_nor_reachable_names_the_way_round(tiny_data_dir, tmp_path):
    """transformers' advice sits on the line after the one quoted; the message said only that it couldn't connect."""
    # the suite runs offline
    way = (r"'nobody/no-such-model' is not a folder here, nor in the Hugging Face cache, and the Hub could not be "
           r"reached \(this machine is offline: HF_HUB_OFFLINE is set\): download it once where the Hub is reachable "
           r"\(`hf download nobody/no-such-model`\), or pass a folder saved with save_pretrained\.")
    with pytest.raises(xfer_nlp.ConfigError, match="Could not read the model config of 'nobody/no-such-model': .*"
                       + way):
        xfer_nlp.run(mode="probe", model_name_or_path="nobody/no-such-model", dataset_name=str(tiny_data_dir),
                     output_dir=str(tmp_path / "o"))
    with pytest.raises(xfer_nlp.ConfigError, match="Could not load the model 'nobody/no-such-model' .*" + way):
        xfer_nlp.predict("nobody/no-such-model", ["a dull film"])


def test_long_texts_are_truncated_with_a_count(tiny_model_dir, tmp_path):
    rows = make_rows(40, 0)
    rows[0]["text"] = " ".join(["good film"] * 200)
    rows[1]["text"] = " ".join(["dull plot"] * 200)
    data = write_jsonl(tmp_path / "long" / "train.jsonl", rows)
    result = xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(data),
                          output_dir=str(tmp_path / "o"), max_seq_length=32, feature_cache_dir=str(tmp_path / "f"))
    log = (result.output_dir / "train.log").read_text()
    counts = re.findall(r"(\d+) of (\d+) (\w+) texts are longer than --max_seq_length 32 tokens; read as the first 32 "
                        r"tokens\.", log)
    assert sum(int(n) for n, _, _ in counts) == 2, log  # the two long rows, in whichever split they landed
    assert {split for _, _, split in counts} <= {"train", "validation"}
    assert sum(result.results["split_sizes"].values()) == 40  # cut, not dropped


def test_unknown_keyword_in_python_api(tmp_path):
    with pytest.raises(xfer_nlp.ConfigError, match="did you mean 'learning_rate'"):
        xfer_nlp.run(mode="finetune", learnig_rate=1e-3, output_dir=str(tmp_path / "o"))


TEXT = st.one_of(st.text(max_size=30), st.none(), st.integers(), st.floats(allow_nan=True), st.booleans())
LABEL = st.one_of(st.integers(-3, 5), st.text(alphabet=string.ascii_letters, max_size=3), st.none(), st.floats(),
                  st.booleans(), st.lists(st.integers(), max_size=2))
ROW = st.one_of(st.fixed_dictionaries({"text": TEXT, "label": LABEL}),
                st.dictionaries(st.sampled_from(["text", "label", "x"]), st.one_of(TEXT, LABEL), max_size=3))


def _serialise(rows, fmt, junk):
    import json

    if fmt == "jsonl":
        lines = [json.dumps(r) for r in rows]
        if junk:
            lines.insert(len(lines) // 2, junk)
        return "\n".join(lines) + "\n"
    out = ["text,label"]
    for r in rows:
        out.append(f"{json.dumps(r.get('text'))},{r.get('label', '')}")
    if junk:
        out.insert(1, junk)
    return "\n".join(out) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=0, max_size=12), fmt=st.sampled_from(["jsonl", "csv"]),
       junk=st.sampled_from(["", "{", "not json, at all", '"unclosed', ",,,,", "\x00\x01", "[1, 2]"]))
@example(rows=[{"text": "0", "label": float("nan")}], fmt="jsonl", junk="")  # drawn once: a crash, now a message
@example(rows=[{"text": "0", "label": float("inf")}], fmt="jsonl", junk="")
def test_malformed_rows_give_a_clear_error_or_load(tmp_path_factory, rows, fmt, junk):
    path = tmp_path_factory.mktemp("fuzz") / f"data.{fmt}"
    path.write_text(_serialise(rows, fmt, junk), encoding="utf-8")
    try:
        data = load_text_data(resolve(RunConfig(dataset_name=str(path), validation_split_ratio=0.3)))
    except xfer_nlp.XferError as e:  # the only exception a user's data may cause; anything else fails the test
        assert len(str(e)) > 20
        return
    assert set(data.splits["train"].column_names) == {"text", "label"}
    assert len(set(data.splits["train"]["label"])) >= 2
