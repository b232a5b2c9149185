"""Contrastive mode (SetFit's method on this package's parts): the pairs, the run, and its bad inputs."""

from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset
from conftest import make_rows, write_jsonl

import xfer_nlp
from xfer_nlp import batches
from xfer_nlp.batches import LengthGroupedBatchSampler
from xfer_nlp.errors import ConfigError
from xfer_nlp.pairs import auto_rounds, make_pairs, pair_dataset, pair_lengths


@pytest.mark.parametrize("labels", [[0, 1] * 8, [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]], ids=["binary", "three-classes"])
def test_pairs_are_seeded_balanced_and_cover_every_class(labels):
    pairs = make_pairs(labels, iterations=5, seed=3)
    assert pairs == make_pairs(labels, iterations=5, seed=3)  # seeded
    assert pairs != make_pairs(labels, iterations=5, seed=4)
    assert len(pairs) == 2 * 5 * len(labels)
    targets = Counter(t for _, _, t in pairs)
    assert targets[1.0] == targets[0.0] == 5 * len(labels)  # as many same-label pairs as different-label ones
    assert Counter(i for i, _, _ in pairs) == {i: 10 for i in range(len(labels))}  # every text, every round, twice
    for i, j, t in pairs:
        assert i != j
        assert (labels[i] == labels[j]) == (t == 1.0)
    for c in set(labels):  # every class is in same-label pairs and in different-label pairs
        assert any(labels[i] == c and t == 1.0 for i, _, t in pairs)
        assert any(labels[j] == c and t == 0.0 for _, j, t in pairs)


def test_a_pair_row_holds_both_texts_ids_and_its_length_is_the_longer_side():
    rng = np.random.default_rng(0)
    ids = [rng.integers(100, 200, rng.integers(3, 12)).tolist() for _ in range(10)]
    tokenized = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                   "labels": [0, 1] * 5})
    pairs = make_pairs(tokenized["labels"], iterations=3, seed=0)
    ds = pair_dataset(tokenized, pairs)
    assert len(ds) == len(pairs) and set(ds.column_names) == {
        "input_ids_a", "input_ids_b", "attention_mask_a", "attention_mask_b", "labels", "doc"}
    for row, (i, j, target) in zip(ds, pairs):
        assert row["input_ids_a"] == ids[i] and row["input_ids_b"] == ids[j] and row["labels"] == target
        assert row["attention_mask_a"] == [1] * len(ids[i])
    assert pair_lengths(ds).tolist() == [max(len(ids[i]), len(ids[j])) for i, j, _ in pairs]


def test_partners_are_drawn_over_the_whole_class():
    labels = [0] * 4 + [1] * 4
    pairs = make_pairs(labels, iterations=400, seed=0)
    partners = Counter(j for i, j, t in pairs if i == 0 and t == 1.0)
    assert set(partners) == {1, 2, 3} and min(partners.values()) > 100  # uniform over the other three


def test_a_contrastive_run_tunes_the_encoder_then_fits_the_probe_head(tiny_run):
    result = xfer_nlp.run(mode="contrastive", pair_iterations=2, learning_rate=1e-3, **tiny_run)
    res = result.results
    assert res["mode"] == "contrastive" and res["probe"]["C"] in [float(c) for c in res["config"]["probe_c_grid"].split(",")]
    assert len(res["history"]) == 1 and res["history"][0]["step"] == 40  # 160 texts x 2 rounds x 2 / batch 16
    log = (result.output_dir / "train.log").read_text()
    assert "Contrastive pairs: 640 (2 rounds x 2 per training text; --pair_iterations)." in log
    probe = xfer_nlp.run(mode="probe", **{**tiny_run, "output_dir": tiny_run["output_dir"] + "-probe"})
    assert result.metrics["validation"]["accuracy"] >= probe.metrics["validation"]["accuracy"] - 0.1
    assert np.isfinite(result.metrics["validation"]["macro_f1"])
    card = (result.output_dir / "README.md").read_text()
    assert "contrastive few-shot tuning" in card and "pair_iterations: 2" in card
    assert "(mean pooling, each sentence vector scaled to unit length)" in card


def test_the_contrastive_head_reads_unit_length_vectors_and_the_probe_does_not(tiny_run):
    """The cosine loss trains directions only, so the exported head reads sentence vectors of length 1 (as SetFit's
    Normalize does); the probe reads the encoder's own vectors."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    lengths = {}
    for mode in ("contrastive", "probe"):
        run = xfer_nlp.run(mode=mode, pair_iterations=1, max_train_samples=32,
                           **{**tiny_run, "output_dir": f"{tiny_run['output_dir']}-{mode}"})
        model = AutoModelForSequenceClassification.from_pretrained(run.output_dir).eval()
        batch = AutoTokenizer.from_pretrained(run.output_dir)(["good film", "a dull, long and tiresome plot"],
                                                              padding=True, return_tensors="pt")
        assert model.config.normalize is (mode == "contrastive")
        with torch.no_grad():
            lengths[mode] = model.features(**batch).norm(dim=-1)
    assert torch.allclose(lengths["contrastive"], torch.ones(2), atol=1e-5)
    assert not torch.allclose(lengths["probe"], torch.ones(2), atol=1e-2)


@pytest.mark.parametrize("labels,rounds", [
    ([0] * 8 + [1] * 8, 4),  # 8 x 8 other-label pairs (2 x 28 same-label) over 16 texts
    ([0] * 16 + [1] * 16, 8),  # 256 / 32
    ([0] * 50 + [1] * 50, 20),  # 25 a text: capped at SetFit's 20
    ([0] * 10 + [1] * 2, 3),  # imbalanced, the same-label pairs the more numerous: 45 + 1 (20 other) over 12
    ([0, 0, 1, 1, 2, 2], 2),  # three classes: 12 other-label pairs (3 same-label) over 6 texts
    ([0, 1, 2, 3] * 4, 6),  # four classes: 96 other-label pairs over 16 (24 same-label would give 1)
    ([0, 1, 2, 3, 4] * 20, 20),  # 4,000 other-label pairs over 100: capped at SetFit's 20
])
def test_the_default_pair_rounds_pass_once_over_the_kind_of_pair_setfit_draws_once(labels, rounds):
    assert auto_rounds(labels) == rounds


def test_without_pair_iterations_the_rule_sets_the_rounds_and_says_so(tiny_run, monkeypatch):
    groups = []
    real = batches.train_loader
    monkeypatch.setattr(batches, "train_loader", lambda *a, **k: groups.append(k.get("group")) or real(*a, **k))
    result = xfer_nlp.run(mode="contrastive", max_train_samples=16, **tiny_run)
    assert groups == [1]  # the pairs' loader draws random batches (see the next test)
    assert result.results["pairs"] == {"rounds": 4, "pairs": 128, "rule": "auto: one pass over the training set's "
                                       "distinct pairs of the more numerous kind (same-label or other-label), "
                                       "between 1 and 20 rounds"}
    assert result.results["history"][-1]["step"] == 8  # 128 pairs / batch 16
    assert "Contrastive pairs: 128 (4 rounds x 2 per training text; auto:" in (result.output_dir / "train.log").read_text()
    assert "pair_iterations: 4 (128 pairs; auto:" in (result.output_dir / "README.md").read_text()


def test_contrastive_with_one_example_of_a_class_is_one_message(tiny_run, tmp_path):
    rows = make_rows(20, 1)
    lonely = [r for r in rows if r["label"] == 1][:1] + [r for r in rows if r["label"] == 0]
    data = tmp_path / "lonely"
    write_jsonl(data / "train.jsonl", lonely)
    write_jsonl(data / "validation.jsonl", make_rows(10, 2))
    with pytest.raises(ConfigError) as e:
        xfer_nlp.run(mode="contrastive", **{**tiny_run, "dataset_name": str(data)})
    assert "contrastive needs at least 2 training examples of each class" in str(e.value) and "class 1 has 1" in str(e.value)
    assert not (tmp_path / "out" / "results.json").exists()
    with pytest.raises(ConfigError, match=r"classes 0, 1 have 1\. Add examples of them \(with --max_train_samples: a "
                                          r"size of at least twice the classes, 4\)"):
        xfer_nlp.run(mode="contrastive", max_train_samples=2, **tiny_run)


def test_pair_batches_are_random_where_training_batches_group_by_length():
    """Grouping pairs by length cost mr 2 points at n=100 (RESULTS, "Random pair batches"), so pairs use group=1."""
    lengths = np.arange(3200)  # every length once: a batch's spread shows how it was drawn
    spread = {}
    for group in (50, 1):
        sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=0, group=group)
        drawn = list(sampler)
        assert sorted(i for b in drawn for i in b) == list(range(3200))  # every example once
        assert drawn == list(LengthGroupedBatchSampler(lengths, 32, 0, group))  # a function of (seed, epoch)
        spread[group] = np.median([lengths[b].max() - lengths[b].min() for b in drawn])
    assert spread[50] < 200  # a mega-batch of 1,600 sorted: neighbours differ by about 2 each
    assert spread[1] > 2500  # 32 of 3,200 at random span most of the range
