"""Tokenised splits -> dataloaders whose batches group texts of similar length (less padding, same randomness)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

logger = logging.getLogger(__name__)


def tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """input_ids/attention_mask/labels per example, unpadded; warns once with the count of truncated texts."""

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        # Only texts that fill max_length can have been cut; re-tokenise just those to tell.
        full = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == max_length]
        cut = set()
        if full:
            lengths = tokenizer([batch["text"][i] for i in full], truncation=False)["input_ids"]
            cut = {i for i, ids in zip(full, lengths) if len(ids) > max_length}
        enc["labels"] = batch["label"]
        enc["truncated"] = [i in cut for i in range(len(batch["text"]))]
        return enc

    out = splits.map(encode, batched=True, remove_columns=["text", "label"], desc="Tokenising")
    for name, ds in out.items():
        n = int(np.sum(ds["truncated"]))
        if n:
            logger.warning("%d of %d %s texts are longer than --max_seq_length %d tokens and were truncated.",
                           n, len(ds), name, max_length)
    return out.remove_columns("truncated")


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples.

    Shuffle, cut into mega-batches of `group` batches, sort each by length, cut into batches, shuffle the batches:
    padding drops to near zero while every epoch still sees a fresh order (the idea of transformers'
    LengthGroupedSampler, as a batch sampler so Accelerate can shard it). The order is a pure function of
    (seed, epoch), which is what makes resuming mid-epoch exact.
    """

    def __init__(self, lengths, batch_size: int, seed: int, group: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        mega = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start:start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        # The one short batch goes last: Accelerate's sharding expects every batch but the last to be full.
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        for i in rng.permutation(len(full)):
            yield full[i]
        yield from short


def eval_order(lengths) -> np.ndarray:
    """The order evaluation sees examples in (and, gathered across processes, returns them in): longest first."""
    return np.argsort(-np.asarray(lengths), kind="stable")


class SortedBatchSampler(Sampler[list[int]]):
    """Evaluation batches, longest first: least padding, and any out-of-memory shows on the first batch."""

    def __init__(self, lengths, batch_size: int):
        self.order = eval_order(lengths)
        self.batch_size = batch_size  # Accelerate reads it to shard and to drop padding samples when gathering

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.order), self.batch_size):
            yield self.order[i:i + self.batch_size].tolist()


def make_collator(tokenizer, mixed_precision: str | None, device_type: str):
    # Multiples of 8 let fp16/bf16 matmuls hit tensor-core shapes; on CPU and in fp32 they only add padding.
    multiple = 8 if mixed_precision in ("fp16", "bf16") and device_type == "cuda" else None
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")


def _own_generator() -> torch.Generator:
    # Each DataLoader iterator draws a seed from its generator; with none it draws from the global RNG, which
    # would shift dropout masks whenever an iterator is created (an evaluation, a resume) and break exact resume.
    return torch.Generator().manual_seed(0)


def train_loader(ds, collator, batch_size: int, seed: int) -> DataLoader:
    lengths = [len(x) for x in ds["input_ids"]]
    return DataLoader(ds, batch_sampler=LengthGroupedBatchSampler(lengths, batch_size, seed), collate_fn=collator,
                      generator=_own_generator())


def eval_loader(ds, collator, batch_size: int) -> DataLoader:
    lengths = [len(x) for x in ds["input_ids"]]
    return DataLoader(ds, batch_sampler=SortedBatchSampler(lengths, batch_size), collate_fn=collator,
                      generator=_own_generator())
