"""SetFit's contrastive stage (Tunstall et al. 2022) on this package's parts: seeded sentence pairs from the
labelled set, and the cosine-similarity loss on the encoder's pooled embeddings.

Each of --pair_iterations rounds gives every training text one partner of its own label (target similarity 1)
and one of another label (target 0), as SetFit's `num_iterations` sampling does; multi-class works the same way.
A pair is one row holding both texts' token ids; the collator stacks the two sides into one batch of 2B rows, so
one forward pass (and, under DDP, one gradient reduction) serves both.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from .batches import token_lengths
from .errors import ConfigError
from .families import sentence_features


MAX_ROUNDS = 20  # SetFit's num_iterations default
AUTO_RULE = (f"auto: one pass over the training set's distinct pairs of the more numerous kind (same-label or "
             f"other-label), between 1 and {MAX_ROUNDS} rounds")  # auto_rounds, as results.json and the log name it


def auto_rounds(labels) -> int:
    """--pair_iterations when not given: about one pass over the distinct pairs of the more numerous kind, what
    SetFit's default oversampling draws (it repeats the other kind up to as many), at least 1 round and at most
    MAX_ROUNDS. More rounds on a few texts repeat the same pairs: on 16 sst2 sentences 20 rounds scored 4.7 points
    below SetFit and took twice its time. With two balanced classes the other-label pairs are the more numerous by
    n/2 (a rare class makes it the same-label ones); with K balanced classes they outnumber the same-label ones about
    K-1 to 1, and on five-class sst5 counting the same-label ones drew 4-6x fewer pairs than SetFit and scored up to
    4.0 points lower on test (benchmarks/RESULTS.md, "Pair rounds")."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    n = int(counts.sum())
    same = int((counts * (counts - 1) // 2).sum())
    once = max(same, n * (n - 1) // 2 - same)
    return max(1, min(MAX_ROUNDS, once // n))


def make_pairs(labels, iterations: int, seed: int, label_names=None) -> list[tuple[int, int, float]]:
    """(i, j, target) for every text i, `iterations` times: one same-label j != i (1.0), one other-label j (0.0)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ConfigError("contrastive needs at least two classes in the training set.")
    lonely = [int(c) for c, n in zip(classes, counts) if n < 2]
    if lonely:
        names = ", ".join(str(label_names[c]) if label_names is not None else str(c) for c in lonely)
        one = len(lonely) == 1
        raise ConfigError(f"contrastive needs at least 2 training examples of each class to make a same-label pair; "
                          f"{'class' if one else 'classes'} {names} {'has' if one else 'have'} 1. Add examples of "
                          f"{'it' if one else 'them'} (with --max_train_samples: a size of at least twice the "
                          f"classes, {2 * len(classes)}), or use --mode probe.")
    rng = np.random.default_rng(seed)
    members = {int(c): np.flatnonzero(labels == c) for c in classes}
    others = {int(c): np.flatnonzero(labels != c) for c in classes}
    pairs = []
    for _ in range(iterations):
        for i, y in enumerate(labels.tolist()):
            same = members[y]
            j = same[rng.integers(len(same) - 1)]
            j = j if j != i else same[-1]  # a partner other than itself: draw among the other n-1
            pairs.append((i, int(j), 1.0))
            pairs.append((i, int(others[y][rng.integers(len(others[y]))]), 0.0))
    order = rng.permutation(len(pairs))
    return [pairs[k] for k in order]


def pair_dataset(tokenized: Dataset, pairs: list[tuple[int, int, float]]) -> Dataset:
    """One row per pair: both sides' input ids (and masks) and the target similarity as labels."""
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in tokenized.column_names]
    rows = tokenized.select_columns(columns).to_dict()  # Python lists: a lazy Column costs ~0.1 ms a row lookup
    i, j, target = (list(x) for x in zip(*pairs))
    data = {f"{c}_{side}": [rows[c][k] for k in idx] for c in columns for side, idx in (("a", i), ("b", j))}
    data["labels"] = target
    data["doc"] = list(range(len(pairs)))  # unused in training, kept so every batch looks alike
    return Dataset.from_dict(data)


class PairCollator:
    """Pads the a-sides and b-sides of a batch of pairs into one batch of 2B rows (a first) plus B targets."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        keys = [k[:-2] for k in rows[0] if k.endswith("_a")]
        sides = [{k: r[f"{k}_{side}"] for k in keys} for side in ("a", "b") for r in rows]
        batch = self.collator(sides)
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
        batch["doc"] = torch.tensor([r["doc"] for r in rows])
        return batch


def pair_lengths(ds: Dataset) -> np.ndarray:
    """Each pair's longer side in tokens."""
    return np.maximum(token_lengths(ds, "input_ids_a"), token_lengths(ds, "input_ids_b"))


def cosine_loss(model, layout, batch: dict) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss: mean squared error between cos(u, v) and the pair's target."""
    features = sentence_features(model, layout, batch).float()
    u, v = features.chunk(2)
    return torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(u, v), batch["labels"])
