"""Pushing to the Hub with the real huggingface_hub client, against a Hub-compatible server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from hub_server import TOKEN, HubServer

import xfer_nlp

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, endpoint, token=TOKEN):
    # A fresh HF_HOME keeps a token saved by `hf auth login` out of the test and the caches out of the repo.
    with tempfile.TemporaryDirectory(prefix="hf-home-") as hf_home:
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": hf_home}
        env.pop("HF_TOKEN", None)
        if token:
            env["HF_TOKEN"] = token
        return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub-run")
    return xfer_nlp.run(mode="probe", model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                        output_dir=str(tmp / "run"), feature_cache_dir=str(tmp / "f"), max_seq_length=32).output_dir


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_recipe_push_uploads_model_card_and_results(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    with HubServer() as hub:
        result = cli(ROOT / "recipes" / "sentiment.py", "--mode", "probe", "--model_name_or_path", tiny_model_dir,
                     "--dataset_name", tiny_data_dir, "--output_dir", out, "--max_seq_length", "32",
                     "--feature_cache_dir", tmp_path / "f", "--push_to_hub", "--hub_model_id", "tester/tiny-probe",
                     "--hub_private_repo", "--hub_token", TOKEN, endpoint=hub.endpoint, token=None)
        assert result.returncode == 0, result.stderr[-2000:]
        repo = hub.state.repos["tester/tiny-probe"]
    assert repo["private"] is True
    for name in ("model.safetensors", "config.json", "tokenizer.json", "results.json", "config_xfer.yaml", "README.md"):
        assert repo["files"][name] == (out / name).read_bytes(), name
    card = ModelCard(repo["files"]["README.md"].decode())
    assert card.data.pipeline_tag == "text-classification"
    metrics = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    local = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics[("validation", "accuracy")] == round(local["validation"]["accuracy"], 4)
    assert metrics[("test", "f1")] == round(local["test"]["macro_f1"], 4)
    # local data is named by its folder's name: the model-index field expects a dataset id, not this machine's path
    assert {(r.dataset_name, r.dataset_type) for r in card.data.eval_results} == {(tiny_data_dir.name,) * 2}
    assert f"A text classifier for **{tiny_data_dir.name}**" in card.text and str(tiny_data_dir) not in card.text
    # each label's precision / recall / F1 on each split, by name, read from results.json's per-class figures
    names = json.loads((out / "results.json").read_text())["label_names"]
    for i, name in enumerate(names):
        row = next(line for line in card.text.splitlines() if line.startswith(f"| {name} |")).split("|")
        for split, cell in (("validation", row[2]), ("test", row[3])):
            c = local[split]["per_class"][str(i)]
            assert cell.strip() == f"{c['precision']:.3f} / {c['recall']:.3f} / {c['f1']:.3f} ({c['support']})"
    # the token never lands in an output, a log or the uploaded files
    for blob in [*repo["files"].values(), result.stdout.encode(), result.stderr.encode(),
                 *(p.read_bytes() for p in out.iterdir() if p.is_file())]:
        assert TOKEN.encode() not in blob


@pytest.mark.parametrize("failure", ["unauthorised", "server_error", "unreachable"])
def test_failed_push_keeps_outputs_and_names_the_retry(finished_run, failure):
    before = snapshot(finished_run)
    with HubServer() as hub:
        endpoint = hub.endpoint
        if failure == "server_error":
            hub.state.fail_with = 500
        if failure != "unreachable":
            result = cli("-m", "xfer_nlp.cli", "push", finished_run, "--hub_model_id", "tester/x", endpoint=endpoint,
                         token=TOKEN if failure == "server_error" else "hf_wrong")
    if failure == "unreachable":  # the server is gone: nothing listens on that port any more
        result = cli("-m", "xfer_nlp.cli", "push", finished_run, "--hub_model_id", "tester/x", endpoint=endpoint)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Every local output is intact" in result.stderr
    assert f"xfer-nlp push {finished_run} --hub_model_id tester/x" in result.stderr
    assert snapshot(finished_run) == before


def test_retry_push_after_failure_succeeds(finished_run):
    with HubServer() as hub:
        result = cli("-m", "xfer_nlp.cli", "push", finished_run, "--hub_model_id", "tester/retry",
                     endpoint=hub.endpoint)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "tester/retry" in result.stdout
        assert set(hub.state.repos["tester/retry"]["files"]) >= {"model.safetensors", "results.json", "README.md"}


def test_push_of_unfinished_folder_is_refused(tmp_path):
    with pytest.raises(xfer_nlp.XferError, match="no finished run"):
        xfer_nlp.push(tmp_path)


def test_a_repository_id_the_hub_would_refuse_is_refused_before_training_or_the_network(finished_run, tmp_path):
    """A typo in --hub_model_id surfaced at the push, after training, and its retry command repeated it unquoted."""
    from xfer_nlp.config import RunConfig, resolve

    bad = "is not a Hub repository id: Repo id must use alphanumeric chars"
    with pytest.raises(xfer_nlp.XferError, match=f"--hub_model_id 'me/my model' {bad}"):
        resolve(RunConfig(mode="probe", push_to_hub=True, hub_model_id="me/my model"))
    with pytest.raises(xfer_nlp.XferError, match=r"--hub_model_id 'a/b/c' is not a Hub repository id: .*'a/b/c'\.$"):
        resolve(RunConfig(mode="probe", push_to_hub=True, hub_model_id="a/b/c"))
    with pytest.raises(xfer_nlp.XferError, match="names the repository after the output folder, 'my run', which is "
                                                 "not a Hub repository name .* Pass --hub_model_id user/name."):
        resolve(RunConfig(mode="probe", push_to_hub=True, output_dir=str(tmp_path / "my run")))
    assert resolve(RunConfig(mode="probe", output_dir=str(tmp_path / "my run"))).push_to_hub is False  # no push: fine
    with HubServer() as hub:  # refused before any request: the server sees none
        result = cli("-m", "xfer_nlp.cli", "push", finished_run, "--hub_model_id", "me/my model",
                     endpoint=hub.endpoint)
        assert result.returncode == 2 and f"--hub_model_id 'me/my model' {bad}" in result.stderr
        assert not hub.state.requests


def test_the_cards_usage_snippet_runs_as_written_on_a_text_longer_than_the_model_reads(finished_run):
    """The card's code is what a Hub visitor copies: it must run with transformers alone, on a long review too
    (without truncation a text past the position embeddings ended pipeline() in a RuntimeError)."""
    card = (finished_run / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    long_text = "a gripping and beautifully made film " * 60  # 300 words; the tiny model has 128 positions
    code = code.replace('"a gripping, beautifully made film"', repr(long_text))
    ran = subprocess.run([sys.executable, "-c", 'import sys; sys.modules["xfer_nlp"] = None\n' + code],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "'label':" in ran.stdout and "truncation=True, max_length=32" in code


def test_the_card_carries_the_starting_model_s_license_and_claims_none_it_cannot_read(finished_run, tiny_model_dir,
                                                                                       tiny_data_dir, tmp_path):
    """Every card said apache-2.0, whatever the encoder's terms (a cc-by-nc-4.0 encoder's fine-tune included)."""
    import shutil

    from xfer_nlp.hub import base_license
    from xfer_nlp.modes import EMBEDDED_MODEL

    assert base_license(EMBEDDED_MODEL) == {"license": "apache-2.0"}  # its packaged README.md says so
    card = ModelCard.load(finished_run / "README.md")
    assert card.data.license is None and "License: none stated." in card.text  # the tiny encoder declares none
    for front, expected in (("license: cc-by-nc-4.0", {"license": "cc-by-nc-4.0"}),
                            ("license: other\nlicense_name: acme-research\nlicense_link: LICENSE.md",
                             {"license": "other", "license_name": "acme-research", "license_link": "LICENSE.md"}),
                            ("license: [mit, 'not: one id']", {})):  # not one license id: none is claimed
        encoder = tmp_path / "encoder"
        shutil.rmtree(encoder, ignore_errors=True)
        shutil.copytree(tiny_model_dir, encoder)
        (encoder / "README.md").write_text(f"---\n{front}\n---\n# an encoder\n")
        out = xfer_nlp.run(mode="probe", model_name_or_path=str(encoder), dataset_name=str(tiny_data_dir),
                           output_dir=str(tmp_path / "run"), max_seq_length=32, overwrite_output_dir=True,
                           no_feature_cache=True).output_dir
        card = ModelCard.load(out / "README.md")
        assert card.data.license == expected.get("license")
        assert {k: getattr(card.data, k, None) for k in expected} == expected
        assert (f"License: {expected['license']}, as the starting model" if expected else "none stated") in card.text
        if expected:  # a run started from this export inherits the terms from its card
            assert base_license(str(out)) == expected
