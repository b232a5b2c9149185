"""Tokenised splits -> dataloaders whose batches group texts of similar length (less padding, same randomness)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from .errors import ConfigError, OutOfMemory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """How a text is turned into the token ids the model reads: at most `max_length` ids, specials included.

    A text that fits is read whole. A longer one keeps its first tokens (head, what pipeline() does), its last
    (tail), its first `head_tokens` and its last max_length - head_tokens - specials (head+tail, Sun et al. 2019),
    or, with `chunk_stride`, is read as overlapping windows of max_length that start every `chunk_stride` content
    tokens, whose logits (and, for the probe, features) are averaged into the text's.

    With `pairs` each example is two texts (--text_pair_column), read as the tokenizer pairs them, one input; a
    longer pair is cut by the tokenizer's own truncation (truncation "head": tokens go from the end of the longer
    text, as pipeline() cuts a pair).
    """

    max_length: int
    truncation: str = "head"  # head | tail | head+tail
    head_tokens: int = 0
    chunk_stride: int | None = None
    pairs: bool = False

    def describe(self) -> str:
        if self.pairs:
            return f"each text and its pair as one input of at most {self.max_length} tokens, a longer pair cut " \
                   "from the end of its longer text"
        if self.chunk_stride:
            return f"windows of {self.max_length} tokens every {self.chunk_stride} tokens, averaged"
        if self.truncation == "head+tail":
            return f"the first {self.head_tokens} and the last tokens, {self.max_length} in all"
        return f"the {'first' if self.truncation == 'head' else 'last'} {self.max_length} tokens"


def saved_reading(record) -> Reading | None:
    """The Reading a run saved in results.json ("reading"), checked field by field; None if it saved none."""
    if record is None:
        return None
    try:
        reading = Reading(**{k: record[k] for k in ("max_length", "truncation", "head_tokens", "chunk_stride")},
                          pairs=record.get("pairs", False))  # runs before pairs existed read one text
        ok = (isinstance(reading.max_length, int) and reading.max_length > 2 and reading.truncation in
              ("head", "tail", "head+tail") and isinstance(reading.head_tokens, int)
              and 0 <= reading.head_tokens < reading.max_length - 2 and (reading.chunk_stride is None or (
                  isinstance(reading.chunk_stride, int) and 0 < reading.chunk_stride < reading.max_length))
              and isinstance(reading.pairs, bool) and not (reading.pairs and (
                  reading.truncation != "head" or reading.chunk_stride)))
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(f"The run's results.json has a malformed 'reading' record ({str(record)[:200]}); re-export "
                          "the model with xfer_nlp, or delete results.json to read texts as pipeline() does.")
    return reading


def _specials(tokenizer) -> tuple[int, int]:
    """How many special tokens a single text gets before and after its own (e.g. [CLS] ... [SEP]: 1, 1)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for before in range(len(full) - len(inner) + 1):
        if full[before:before + len(inner)] == inner:
            return before, len(full) - len(inner) - before
    raise ValueError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens")


def pieces(length: int, specials: tuple[int, int], reading: Reading) -> list[list[int]]:
    """The positions (into a text's ids with specials) that each model input keeps: one list, or one per window."""
    before, after = specials
    if length <= reading.max_length:
        return [list(range(length))]
    content, budget = length - before - after, reading.max_length - before - after
    first, last = list(range(before)), list(range(length - after, length))
    if reading.chunk_stride:
        starts = list(range(0, content - budget, reading.chunk_stride)) + [content - budget]
        return [first + list(range(before + s, before + s + budget)) + last for s in dict.fromkeys(starts)]
    head = {"head": budget, "tail": 0, "head+tail": reading.head_tokens}[reading.truncation]
    kept = list(range(before, before + head)) + list(range(length - after - (budget - head), length - after))
    return [first + kept + last]


def _encode(texts: list[str], labels: list, docs: list[int], tokenizer, reading: Reading,
            pairs: list[str] | None = None) -> dict[str, list]:
    """The columns of tokenised rows for a batch of texts (with `pairs`, of text pairs): the tokenizer's own plus
    labels, doc and long."""
    if (pairs is not None) != reading.pairs:
        raise ValueError(f"a reading {'of' if reading.pairs else 'without'} pairs given {'' if pairs else 'no '}pairs")
    if reading.truncation == "head" and not reading.chunk_stride:
        # The tokenizer's own truncation: the same ids pipeline() reads. A Rust tokenizer keeps what it cut off
        # (`overflowing`), so one pass tells which texts were long; otherwise only texts that fill max_length can
        # have been cut, and just those are tokenised again to tell.
        enc = tokenizer(texts, pairs, truncation=True, max_length=reading.max_length)
        if enc.encodings is not None:
            long = [bool(e.overflowing) for e in enc.encodings]
        else:
            full = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == reading.max_length]
            again = tokenizer([texts[i] for i in full], [pairs[i] for i in full] if pairs else None,
                              verbose=False)["input_ids"] if full else []
            cut = {i for i, ids in zip(full, again) if len(ids) > reading.max_length}
            long = [i in cut for i in range(len(texts))]
        out = {k: list(v) for k, v in enc.items()}
        out["labels"], out["doc"], out["long"] = list(labels), list(docs), long
        return out
    enc = tokenizer(texts, verbose=False)
    specials = _specials(tokenizer)  # only the cut readings need them (two tiny encodings: not on head's path)
    out = {k: [] for k in [*enc.keys(), "labels", "doc", "long"]}
    for i, ids in enumerate(enc["input_ids"]):
        windows = pieces(len(ids), specials, reading)
        for keep in windows:
            for k in enc.keys():
                out[k].append([enc[k][i][j] for j in keep])
            out["labels"].append(labels[i])
            out["doc"].append(docs[i])
            out["long"].append(len(ids) > reading.max_length)
    return out


def _warn_long(docs, long, texts: int, name: str, reading: Reading) -> None:
    n = len(np.unique(np.asarray(docs)[np.asarray(long, dtype=bool)]))
    if n:
        logger.warning("%d of %d %s texts are longer than --max_seq_length %d tokens; read as %s.", n, texts, name,
                       reading.max_length, reading.describe())


def tokenize(splits: DatasetDict, tokenizer, reading: Reading | int, num_proc: int | None = None,
             fingerprint: str | None = None) -> DatasetDict:
    """input_ids/attention_mask/labels and doc (the text's row) per model input; logs how many texts were long.

    Unpadded. With windows a text becomes several rows sharing its doc; otherwise one row per text. `num_proc`:
    datasets.map's worker processes (benchmarks/scale.py measures whether they pay). `fingerprint`: only for
    splits held in memory (predict's chunks), whose map result is never cached on disk; it spares datasets from
    hashing the tokenizer to name the result (about 0.07 s a call). Splits read from files must leave it None, so
    that datasets' cache of tokenised files stays keyed by the tokenizer.
    """
    reading = Reading(reading) if isinstance(reading, int) else reading

    def encode(batch, indices):
        return _encode(batch["text"], batch["label"], indices, tokenizer, reading, batch.get("text_pair"))

    # Split by split, as DatasetDict.map does, so that a split can be given its fingerprint.
    out = DatasetDict({name: ds.map(encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                                    desc="Tokenising", num_proc=num_proc,
                                    new_fingerprint=f"{fingerprint}-{name}" if fingerprint else None)
                       for name, ds in splits.items()})
    for name, ds in out.items():
        columns = ds.select_columns(["doc", "long"]).with_format("numpy")[:]
        _warn_long(columns["doc"], columns["long"], len(splits[name]), name, reading)
    return out.remove_columns("long")


def rows_fingerprint(ds) -> str:
    """Hash of a tokenised split's rows (or contrastive's pairs): every column but the attention masks (unpadded rows,
    so the ids' lengths say them), a list column as its lengths and values; token types too (a text pair and one
    text holding a literal [SEP] have the same ids). Read from the Arrow columns in blocks (no Python list of a
    million rows): the same rows hash alike however the table is chunked. It keys the probe's feature cache, and a
    checkpoint records what its run trained on."""
    import pyarrow.compute as pc

    h = hashlib.blake2b(digest_size=16)
    columns = sorted(c for c in ds.column_names if not c.startswith("attention_mask"))
    for block in ds.select_columns(columns).with_format("arrow").iter(batch_size=65536):
        for name in columns:
            column = block.column(name)
            parts = [pc.list_value_length(column), pc.list_flatten(column)] if hasattr(column.type, "value_type") \
                else [column]
            h.update(name.encode())
            for part in parts:
                values = part.to_numpy()
                h.update(values.astype(np.int64 if values.dtype.kind in "iub" else np.float64).tobytes())
    return h.hexdigest()


def tokenize_rows(texts: list[str], tokenizer, reading: Reading, name: str = "predict",
                  pairs: list[str] | None = None) -> list[dict]:
    """tokenize() for a few texts (or pairs) without datasets: the same rows, as a list of dicts. For predict's small
    calls, where building and mapping an Arrow table took longer than the model (6 of 11 ms for one sentence)."""
    out = _encode(texts, [0] * len(texts), list(range(len(texts))), tokenizer, reading, pairs)
    _warn_long(out["doc"], out.pop("long"), len(texts), name, reading)
    return [dict(zip(out, row)) for row in zip(*out.values())]


def by_doc(values: torch.Tensor, labels: torch.Tensor, doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (one per model input, any order) -> one per text in data order: values averaged over a text's windows.

    A text read as one row keeps its values exactly (a sum of one, divided by one).
    """
    n = int(doc.max()) + 1
    counts = torch.bincount(doc, minlength=n)
    assert bool((counts > 0).all()), "every text of a split must have at least one row"
    sums = torch.zeros(n, values.shape[1], dtype=values.dtype).index_add_(0, doc, values)
    per_text = torch.empty(n, dtype=labels.dtype)
    per_text[doc] = labels
    return sums / counts.unsqueeze(1).to(values.dtype), per_text


@contextmanager
def out_of_memory_explained(advice: Callable[[str], str]):
    """torch's out-of-memory errors (a GPU's torch.OutOfMemoryError, the CPU allocator's refusal, a plain
    RuntimeError) inside the block become one OutOfMemory whose message is advice(torch's first line); any other
    error passes. (On Linux the kernel's OOM killer may end the process instead, which nothing can catch.)"""
    try:
        yield
    except RuntimeError as e:
        if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)):
            raise
        raise OutOfMemory(advice(str(e).splitlines()[0][:200])) from None


def per_text(accelerator, loader, fn, desc: str | None = None, device=None,
             first_text: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(batch) for every row, labels), gathered from all processes and put back in data order with one row per
    text (by_doc: a text read as several windows gets their mean). Without an accelerator (predict) one process
    reads the loader, its batches moved to `device`. A progress bar shows when `desc` is given. `first_text`: the
    document number of the loader's first text (a shard of a split), so rows come back numbered from 0."""
    gather = accelerator.gather_for_metrics if accelerator is not None else (lambda tensors: tensors)
    main = accelerator is None or accelerator.is_local_main_process
    values, labels, docs = [], [], []
    for batch in tqdm(loader, desc=desc, disable=desc is None or not main, leave=False):
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        # gather_for_metrics drops the samples Accelerate duplicated to even out the last batch across processes.
        v, y, d = gather((fn(batch).float(), batch["labels"], batch["doc"]))
        values.append(v.cpu())
        labels.append(y.cpu())
        docs.append(d.cpu() - first_text)
    docs = torch.cat(docs)
    assert len(docs) == len(loader.dataset), "gather_for_metrics must count every row exactly once"
    return by_doc(torch.cat(values), torch.cat(labels), docs)


def choose_reading(cfg, train_texts: list[str], tokenizer,
                   train_pairs: list[str] | None = None) -> tuple[Reading, dict]:
    """The run's Reading from its flags, resolving --truncation auto on the training texts' lengths.

    "Long" means the 90th percentile of the training texts' token counts (specials included; at most 2,000 texts,
    a seeded sample) exceeds --max_seq_length: then head+tail, which Sun et al. (2019) found best on IMDb
    reviews; otherwise head, which for such data cuts at most a tenth of the texts and reads what pipeline() reads.
    Text pairs (`train_pairs`) are always cut as the tokenizer cuts a pair (config.py refuses the other readings).
    """
    rng = np.random.default_rng(0)
    sample = sorted(rng.permutation(len(train_texts))[:2000])
    pairs = [train_pairs[i] for i in sample] if train_pairs is not None else None
    ids = tokenizer([train_texts[i] for i in sample], pairs, verbose=False)["input_ids"]
    p90 = int(np.percentile([len(x) for x in ids], 90))
    truncation = cfg.truncation
    if train_pairs is not None:
        truncation = "head"
    elif truncation == "auto":
        truncation = "head+tail" if p90 > cfg.max_seq_length else "head"
    head = cfg.head_tokens if cfg.head_tokens is not None else cfg.max_seq_length // 4
    stride = None
    if cfg.long_text == "chunk":
        budget = cfg.max_seq_length - sum(_specials(tokenizer))
        stride = cfg.chunk_stride or max(1, budget // 2)
        if stride > budget:
            raise ConfigError(f"--chunk_stride {stride} is more than a window's {budget} text tokens "
                              f"(--max_seq_length {cfg.max_seq_length} less this tokenizer's special tokens), so text "
                              f"between windows would be skipped. Use at most {budget}.")
    reading = Reading(cfg.max_seq_length, truncation, head if truncation == "head+tail" else 0, stride,
                      pairs=train_pairs is not None)
    return reading, {**dataclasses.asdict(reading), "train_p90_tokens": p90}


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


class TokenBudgetSampler(Sampler[list[int]]):
    """Prediction batches, longest first, each as many rows as fit in `max_tokens` padded tokens (rows x the
    batch's first, longest row), at most `max_rows`: short texts go max_rows to a batch and 512-token reviews
    few, so no forward pass holds more than the budget. A row longer than the budget is a batch alone."""

    def __init__(self, lengths, max_tokens: int, max_rows: int | None = None):
        self.order = eval_order(lengths)
        longest = np.asarray(lengths)[self.order]
        self.bounds, start = [], 0
        while start < len(self.order):
            rows = min(max(1, max_tokens // max(1, int(longest[start]))), max_rows or len(self.order))
            self.bounds.append((start, start + rows))
            start += rows

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self):
        for start, end in self.bounds:
            yield self.order[start:end].tolist()


def make_collator(tokenizer, mixed_precision: str | None, device_type: str):
    # Multiples of 8 let fp16/bf16 matmuls hit tensor-core shapes; on CPU and in fp32 they only add padding.
    multiple = 8 if mixed_precision in ("fp16", "bf16") and device_type == "cuda" else None
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")


def bucket_length(longest: int, max_length: int) -> int:
    """The padded length of a batch whose longest row has `longest` ids: the next of 16, 24, 32, 48, 64, 96, ...
    (2^k and 1.5 x 2^k, all multiples of 8 for tensor cores), at most `max_length`. A compiled step records one
    CUDA graph per shape, so few shapes keep recording rare, at most a third of a batch in padding."""
    length = 16
    while length < longest:
        length = length * 3 // 2 if length & (length - 1) == 0 else length * 4 // 3
    return min(length, max_length)


class BucketCollator:
    """Pads each batch to bucket_length of its longest row, so a compiled training step sees a handful of shapes
    instead of one per length (`--torch_compile`)."""

    def __init__(self, tokenizer, max_length: int):
        self.pad = DataCollatorWithPadding(tokenizer, padding="max_length", return_tensors="pt")
        self.max_length = max_length

    def __call__(self, features: list[dict]) -> dict:
        self.pad.max_length = bucket_length(max(len(f["input_ids"]) for f in features), self.max_length)
        return self.pad(features)


def _own_generator() -> torch.Generator:
    # Each DataLoader iterator draws a seed from its generator; with none it draws from the global RNG, which
    # would shift dropout masks whenever an iterator is created (an evaluation, a resume) and break exact resume.
    return torch.Generator().manual_seed(0)


def token_lengths(ds, column: str = "input_ids") -> np.ndarray:
    """Each row's number of token ids, read from the Arrow column's offsets: no Python list of every row's ids,
    which at a million rows would cost gigabytes."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.select_columns([column]).with_format("arrow")[:][column]).to_numpy()


def train_loader(ds, collator, batch_size: int, seed: int, lengths=None, group: int = 50) -> DataLoader:
    """Shuffled training batches; `group`: batches per length-sorted mega-batch (1: plain random batches)."""
    lengths = token_lengths(ds) if lengths is None else lengths
    return DataLoader(ds, batch_sampler=LengthGroupedBatchSampler(lengths, batch_size, seed, group),
                      collate_fn=collator, generator=_own_generator())


def eval_loader(ds, collator, batch_size: int) -> DataLoader:
    lengths = token_lengths(ds)
    return DataLoader(ds, batch_sampler=SortedBatchSampler(lengths, batch_size), collate_fn=collator,
                      generator=_own_generator())


def budget_loader(ds, collator, max_tokens: int, max_rows: int | None = None) -> DataLoader:
    """predict's batches: by a token budget (TokenBudgetSampler), for one process without Accelerate. `ds`: a
    tokenised Dataset, or tokenize_rows' list."""
    lengths = [len(row["input_ids"]) for row in ds] if isinstance(ds, list) else token_lengths(ds)
    return DataLoader(ds, batch_sampler=TokenBudgetSampler(lengths, max_tokens, max_rows), collate_fn=collator,
                      generator=_own_generator())
