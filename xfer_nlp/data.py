"""Named datasets and local files -> clean DatasetDict(text, label) with train/validation(/test) splits."""

from __future__ import annotations

import bz2
import codecs
import csv
import errno
import gzip
import json
import logging
import lzma
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from .config import RunConfig, nearest
from .errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryEntry:
    folder: str  # name of the folder under the data root
    label_names: tuple[str, ...]
    hub_id: str | None  # used only when no local copy exists; None: no Hub copy with these splits
    hub_text: str
    hub_label: str
    hub_splits: tuple[str, ...]  # hub splits that carry labels
    embedded: bool = False  # a copy ships inside the package (xfer_nlp/embedded/<folder>)


REGISTRY = {
    "sst2": RegistryEntry("sst2", ("negative", "positive"), "stanfordnlp/sst2", "sentence", "label",
                          ("train", "validation"), embedded=True),  # the hub test split is unlabelled (-1)
    "sst5": RegistryEntry("sst5", ("very negative", "negative", "neutral", "positive", "very positive"),
                          "SetFit/sst5", "text", "label", ("train", "validation", "test")),
    "mr": RegistryEntry("mr", ("negative", "positive"), "cornell-movie-review-data/rotten_tomatoes", "text", "label",
                        ("train", "validation", "test")),
    "subj": RegistryEntry("subj", ("subjective", "objective"), "SetFit/subj", "text", "label", ("train", "test")),
    # The hub's coarse labels are ordered ABBR, ENTY, DESC, HUM, LOC, NUM; the local files use DESC, ENTY, ABBR, ...
    # so a hub-loaded trec model names its classes by the hub's order (the names come from the hub's features).
    "trec": RegistryEntry("trec", ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"), "CogComp/trec", "text",
                          "coarse_label", ("train", "test")),
    # Pang & Lee's polarity dataset v2.0 (whole reviews); no Hub dataset holds it with these splits.
    "polarity2k": RegistryEntry("polarity2k", ("negative", "positive"), None, "text", "label",
                                ("train", "validation", "test")),
}

EMBEDDED = Path(__file__).resolve().parent / "embedded"  # data that ships inside the package
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
# A text format may come compressed (reviews.jsonl.gz, texts.txt.xz): datasets decompresses it as it reads, and the
# checks here read through the same decompression. Parquet compresses inside the file.
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def file_kind(path: Path) -> tuple[str, str | None]:
    """A data file's format suffix and its compression's: reviews.jsonl.gz -> (".jsonl", ".gz"), a.csv -> (".csv",
    None). Lower case, as the formats are matched."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    return Path(name.removesuffix(compression or "")).suffix, compression


def _split_stem(path: Path) -> str:
    """The name a split file is known by: train for train.jsonl and train.jsonl.gz."""
    return Path(path.name.lower().removesuffix(file_kind(path)[1] or "")).stem


def open_binary(path: Path):
    """The file's bytes, decompressed where its name says it is compressed."""
    compression = file_kind(path)[1]
    return COMPRESSIONS[compression](path, "rb") if compression else path.open("rb")


# What a damaged compressed file raises on reading: gzip's BadGzipFile and bz2's "Invalid data stream" are OSErrors,
# a cut-short file an EOFError.
DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError)
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


@dataclass(frozen=True)
class TextData:
    """The cleaned splits and what the labels mean."""

    splits: DatasetDict  # columns: text (str), label (int), and text_pair (str) for pairs
    label_names: tuple[str, ...]
    source: str  # where it came from, for results and the model card
    notes: tuple[str, ...] = ()  # unusual things done to the data (dropped rows, generated splits)


def data_root(cfg: RunConfig) -> Path | None:
    """Where registry sets live: --data_dir, $XFER_NLP_DATA_DIR, or a shared/data beside the cwd or project."""
    explicit = cfg.data_dir or os.environ.get("XFER_NLP_DATA_DIR")
    if explicit:
        return Path(explicit)
    for candidate in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


# A CSV field in quotes ("a ""quoted"" text"); in a TSV that does not quote, a text that merely begins with a quote.
QUOTED_FIELD = re.compile(r'"(?:[^"]|"")*"')


class _TsvQuotes:
    """How a TSV file uses double quotes, counted line by line: fields quoted as CSV quotes them (as pandas writes a
    TSV), and texts that begin with a literal quote and are not such a field ('"Great" film'), which CSV quoting
    would read as '"Great"' + ' film' and strip. GLUE's TSVs quote nothing."""

    def __init__(self):
        self.quoted = self.literal = 0
        self.rest = ""

    def feed(self, text: str, final: bool = False) -> None:
        lines = (self.rest + text).split("\n")
        self.rest = "" if final else lines.pop()
        for line in lines:
            for field in line.rstrip("\r").split("\t"):
                if not field.startswith('"'):
                    continue
                if QUOTED_FIELD.fullmatch(field):
                    self.quoted += 1
                elif field.count('"') % 2 == 0:  # balanced, so not the first line of a quoted multi-line field
                    self.literal += 1


def _check_file(path: Path) -> tuple[str, dict]:
    """Cheap checks before `datasets` sees the file; returns the datasets builder name and its reading options.
    The file is read in blocks, so checking a file of millions of rows holds one block, not the file."""
    suffix, compression = file_kind(path)
    builder = FORMATS.get(suffix)
    if builder is None:
        raise DataError(f"'{path}' has extension '{suffix or path.suffix}', which xfer_nlp cannot read. Use one of "
                        f"{', '.join(FORMATS)}, the text ones also compressed ({', '.join(COMPRESSIONS)}) (JSON Lines: "
                        f"one {{\"text\": ..., \"label\": ...}} object a line).")
    if builder == "parquet" and compression:
        raise DataError(f"'{path}' is a compressed Parquet file; Parquet compresses inside the file, and datasets "
                        "reads it only as it is. Decompress it (or write the Parquet with its own compression).")
    if path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty. Put labelled examples in it, or point --dataset_name at another file.")
    try:
        return _scan(path, builder, suffix)
    except DECOMPRESSION_ERRORS as e:
        if not compression:
            raise
        raise _not_decompressible(path, e) from None


def _not_decompressible(path: Path, e: BaseException) -> DataError:
    return DataError(f"'{path}' cannot be decompressed as its name says ({file_kind(path)[1]}): {type(e).__name__}: "
                     f"{e}. Check that the file is whole (a download cut short?), or decompress it yourself and pass "
                     "the result.")


def _scan(path: Path, builder: str, suffix: str) -> tuple[str, dict]:
    with open_binary(path) as f:
        if builder == "parquet":
            if f.read(4) != b"PAR1":
                raise DataError(f"'{path}' is named .parquet but is not a Parquet file (no PAR1 header). "
                                "Rename it to its real format or re-export it as Parquet.")
            return builder, {}
        decoder, lines, first = codecs.getincrementaldecoder("utf-8")(), 0, ""
        quotes = _TsvQuotes() if suffix == ".tsv" else None
        while True:
            block = f.read(1 << 24)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:  # e.object: this block after the few bytes of a character cut at its start
                line = lines + e.object[: e.start].count(b"\n") + 1
                raise DataError(f"'{path}' is not UTF-8: byte {e.object[e.start]:#x} on line {line} cannot be decoded. "
                                "Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
            if quotes:
                quotes.feed(text, final=not block)
            if not block:
                break
            lines += block.count(b"\n")
            first = first or text.lstrip("\ufeff \t\r\n")[:1]
    if not first:
        raise DataError(f"'{path}' holds only whitespace. Put labelled examples in it.")
    if builder == "json" and first not in "{[":
        raise DataError(f"'{path}' is named {suffix} but does not start with a JSON object or array. "
                        f"Rename it to its real format (.csv, .tsv) or write it as JSON Lines.")
    options = {"delimiter": "\t"} if quotes else {}
    if quotes and quotes.literal and not quotes.quoted:  # a TSV that quotes nothing: its quotes are text
        options["quoting"] = csv.QUOTE_NONE
        logger.info("'%s' is read without CSV quoting: %d text(s) begin with a quote and none is a quoted field.",
                    path, quotes.literal)
    elif quotes and quotes.literal:
        logger.warning("'%s' has both CSV-quoted fields and %d text(s) that begin with an unquoted quote ('\"Great\" "
                       "film'), which CSV quoting reads as 'Great film'. If such texts matter, write the file as "
                       "JSON Lines.", path, quotes.literal)
    return builder, options


def _load_file(path: Path, split: str = "train", **load_kwargs):
    """datasets' reader for a checked file (its Dataset, or with streaming=True an IterableDataset), read as `split`
    (which names it in datasets' progress bar: "Generating validation split")."""
    builder, kwargs = _check_file(path)
    from datasets import load_dataset

    if builder == "json":
        with open_binary(path) as f:
            if f.read(3) == b"\xef\xbb\xbf":
                kwargs["encoding"] = "utf-8-sig"  # a byte-order mark that editors on Windows write: read past it
    try:
        return load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs, **load_kwargs)
    except Exception as e:  # datasets raises many types for malformed input; all mean "this file is broken"
        raise _cache_refused(e) or _no_rows(path, builder) or _unreadable(path, builder, e) from None


def _no_rows(path: Path, builder: str) -> DataError | None:
    """A file that datasets refused because it holds no examples at all (a header line alone, `[]`, a table of 0
    rows), said as that: datasets' own words ("Instruction "train" corresponds to no data") sent users looking for
    a malformed row. Asked only after the refusal; a file with no rows is a few bytes, so a large one is not read."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            empty = pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # a broken footer: not an empty table, and _unreadable says so
            return None
    elif path.stat().st_size > 1 << 16:
        return None
    else:
        with open_binary(path) as f:
            text = f.read().decode("utf-8-sig")
        if builder == "csv":
            empty = sum(1 for line in text.splitlines() if line.strip()) <= 1  # the header, or nothing
        else:
            try:
                empty = json.loads(text) in ([], {})
            except ValueError:  # JSON Lines, or broken JSON
                return None
    if not empty:
        return None
    return DataError(f"'{path}' has no rows{' (only its header line)' if builder == 'csv' else ''}. Put labelled "
                     "examples in it, or point --dataset_name at another file.")


# A cache that the machine will not let datasets write: a read-only or full home, a quota, another user's folder.
CACHE_REFUSALS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _cache_refused(e: BaseException) -> DataError | None:
    """datasets writes its cache (HF_DATASETS_CACHE: ~/.cache/huggingface/datasets unless HF_HOME says otherwise)
    even for a local file read into memory. A cache it may not write is named as that, with the variable that moves
    it, not as a malformed file or an unknown dataset."""
    while e is not None and not (isinstance(e, OSError) and e.errno in CACHE_REFUSALS):
        e = e.__cause__ or e.__context__
    if e is None:
        return None
    from datasets import config

    return DataError(f"datasets could not write its cache in {config.HF_DATASETS_CACHE} ({e.strerror}: "
                     f"'{e.filename}'). Point HF_HOME (or HF_DATASETS_CACHE) at a folder you may write with room "
                     "to spare, e.g. HF_HOME=$TMPDIR/huggingface, and run the command again.")


def _unreadable(path: Path, builder: str, e: Exception) -> DataError:
    cause = e.__cause__ or e
    return DataError(f"Could not read '{path}' as {builder}: {type(cause).__name__}: {str(cause)[:300]}. "
                     "Check that every row is well-formed and has the same columns.")


def _read_file(path: Path, split: str) -> Dataset:
    # keep_in_memory: the small files we read are faster in RAM than through datasets' arrow cache.
    return _load_file(path, split, keep_in_memory=True)


def _entries(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
        broken = [p for p in entries if p.is_symlink() and not p.exists()]
        if broken:
            raise DataError(f"'{broken[0]}' is a symbolic link that leads nowhere (or back to itself). Point it at "
                            "the real file, or remove it.")
        return [p for p in entries if p.is_file()]
    except OSError as e:
        raise DataError(f"Cannot read the data folder '{folder}': {e.strerror}. Check the path (a symbolic link "
                        "that points to itself, or a folder without read permission).") from None


def _find_split_files(folder: Path, need_train: bool = True) -> dict[str, Path]:
    files = {}
    entries = _entries(folder)
    for split, names in SPLIT_NAMES.items():
        found = [p for p in entries if _split_stem(p) in names and file_kind(p)[0] in FORMATS]
        if len(found) > 1:
            raise DataError(f"'{folder}' has several files for the {split} split: {', '.join(p.name for p in found)}. "
                            "Keep one.")
        if found:
            files[split] = found[0]
    if "train" not in files and (need_train or not files):
        present = ", ".join(p.name for p in entries) or "nothing"
        wanted, fix = ("train file (train.jsonl, train.csv, ...)", "Name the training file train.<ext>") \
            if need_train else ("split file (validation.jsonl, test.csv, ...)", "Name each file after its split")
        raise DataError(f"'{folder}' has no {wanted}; it holds: {present}. {fix}, or pass the file itself as "
                        "--dataset_name.")
    # A validation file named otherwise (validation_set.jsonl) was passed over without a word, and train held out.
    unread = [p.name for p in entries if file_kind(p)[0] in FORMATS and p not in files.values()]
    if unread:
        logger.warning("Data file(s) in '%s' not read: %s. A split is read from a file named %s.", folder,
                       ", ".join(unread), ", ".join(f"{'/'.join(names)}.<ext>" for names in SPLIT_NAMES.values()))
    return files


def _load_raw(cfg: RunConfig, need_train: bool) -> tuple[dict[str, Dataset], tuple[str, ...] | None, str, str, str]:
    """Returns the raw splits, registry label names (if any), source, and text/label column names. Without
    `need_train`, a folder or Hub dataset may hold evaluation splits alone (data that is only scored)."""
    name = cfg.dataset_name
    path = Path(name).expanduser()
    given = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
    if any(given.values()):
        if need_train and not cfg.train_file:
            raise DataError("--validation_file and --test_file go with --train_file; for a folder or registry set "
                            "use --dataset_name. (xfer-nlp evaluate takes either alone.)")
        files = {s: Path(f).expanduser() for s, f in given.items() if f}
        for split, f in files.items():
            if f.is_dir():
                raise DataError(f"--{split}_file '{f}' is a folder. Pass a data file ({', '.join(FORMATS)}), or give "
                                "a folder of train/validation/test files as --dataset_name.")
            if not f.is_file():
                raise DataError(f"--{split}_file '{f}' does not exist. Check the path.")
        if name != RunConfig().dataset_name:  # a recipe's YAML may name one that the command line's file replaces
            logger.warning("--%s_file replaces --dataset_name: '%s' is not read.", next(iter(files)), name)
        # The files themselves, not their folder: a message about a column names the file to fix.
        return ({s: _read_file(f, s) for s, f in files.items()}, None, ", ".join(map(str, files.values())),
                cfg.text_column, cfg.label_column)
    if name in REGISTRY:
        entry = REGISTRY[name]
        root = data_root(cfg)
        local = root / entry.folder if root is not None and (root / entry.folder).is_dir() else None
        if local is None and entry.embedded:
            local = EMBEDDED / entry.folder
        if local is not None:
            files = _find_split_files(local)
            return ({s: _read_file(p, s) for s, p in files.items()}, entry.label_names, str(local), cfg.text_column,
                    cfg.label_column)
        where = "no data root" if root is None else f"{root / entry.folder}" + (
            "" if root.is_dir() else f"; {root} is not a folder")
        if entry.hub_id is None:
            raise DataError(f"Dataset '{name}' has no local copy (looked for {where}) and no copy on "
                            "the Hub. Set --data_dir or $XFER_NLP_DATA_DIR to the folder that holds it.")
        from datasets import load_dataset

        try:
            hub = load_dataset(entry.hub_id)
        except Exception as e:
            raise _cache_refused(e) or DataError(
                f"Dataset '{name}' has no local copy (looked for {where}) and could not be loaded "
                f"from the Hub as '{entry.hub_id}': {str(e)[:200]}. Set --data_dir or $XFER_NLP_DATA_DIR to the "
                "folder that holds it.") from None
        splits = {s: hub[s] for s in entry.hub_splits if s in hub}
        return (splits, _class_names(splits, entry.hub_label) or entry.label_names, f"hf:{entry.hub_id}",
                entry.hub_text, entry.hub_label)
    if path.is_dir() and _is_hub_layout(path):
        splits = _load_hub(str(path), cfg.dataset_config_name, cfg.label_column, need_train)
        return splits, None, str(path), cfg.text_column, cfg.label_column
    if path.is_dir():
        return ({s: _read_file(p, s) for s, p in _find_split_files(path, need_train).items()}, None, str(path),
                cfg.text_column, cfg.label_column)
    if path.is_file():
        return {"train": _read_file(path, "train")}, None, str(path), cfg.text_column, cfg.label_column
    if HUB_ID.fullmatch(name) and file_kind(Path(name))[0] not in FORMATS:
        splits = _load_hub(name, cfg.dataset_config_name, cfg.label_column, need_train)
        return splits, None, f"hf:{name}", cfg.text_column, cfg.label_column
    looks_like_path = "/" in name or file_kind(Path(name))[0] in FORMATS
    if looks_like_path:
        raise DataError(f"Data path '{name}' does not exist. Check the path, or use a registry name: "
                        f"{', '.join(REGISTRY)}.")
    raise DataError(f"Unknown dataset '{name}'{nearest(name, REGISTRY)}. Use a registry name ({', '.join(REGISTRY)}), "
                    "a folder with train/validation/test files, or a data file.")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _is_hub_layout(folder: Path) -> bool:
    """A folder laid out as a Hub dataset repository: a card whose YAML declares configs, or data/ beside it."""
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    declares = text.startswith("---") and "\nconfigs:" in text.split("\n---", 1)[0]
    return declares or (folder / "data").is_dir() and not any(file_kind(p)[0] in FORMATS for p in folder.iterdir())


def _load_hub(source: str, config_name: str | None, label_column: str, need_train: bool) -> dict[str, Dataset]:
    """Any dataset `datasets.load_dataset` reads: a Hub id (cached or online) or a folder laid out like one."""
    from datasets import load_dataset

    try:
        loaded = load_dataset(source, config_name)
    except Exception as e:  # offline, unknown id, unknown config, broken files: datasets raises many types
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false")
        why = (" This machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the datasets "
               "cache: load it once online, or download its files and pass the folder.") if offline else ""
        raise _cache_refused(e) or DataError(
            f"Could not load dataset '{source}'{f' (config {config_name!r})' if config_name else ''}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}.{why}") from None
    splits = {}
    for split, aliases in SPLIT_NAMES.items():
        found = next((a for a in aliases if a in loaded), None)
        # GLUE-style test splits carry -1 for "no label": they cannot be scored, so they are left out.
        if found is not None and not (label_column in loaded[found].column_names
                                      and set(loaded[found][label_column]) == {-1}):
            splits[split] = loaded[found]
    if "train" not in splits and (need_train or not splits):
        kind = "train split" if need_train else "labelled split"
        raise DataError(f"Dataset '{source}' has no {kind} (it has {', '.join(loaded)}). Pass a dataset with "
                        "one, or your own files with --train_file.")
    return splits


def _class_names(splits: dict[str, Dataset], label_column: str) -> tuple[str, ...] | None:
    """The class names a ClassLabel column carries (a Hub dataset's, or a parquet or arrow file's that datasets
    wrote); train's where there is one."""
    feature = next(iter(splits.values())).features.get(label_column)
    return tuple(feature.names) if hasattr(feature, "names") else None


def _labels_to_ids(raw: dict[str, list], registry_names,
                   one_class_ok: bool = False) -> tuple[dict[str, list[int]], tuple[str, ...], list[str]]:
    """Map each split's raw labels to ids 0..K-1 fixed by train (by every split, for data that is only scored and
    has no train); explain anything unusual. A single class is an error unless `one_class_ok` (data that is only
    scored, never trained on)."""
    notes = []

    def classes_from(raw):
        return raw["train"] if "train" in raw else [v for values in raw.values() for v in values]

    train = classes_from(raw)
    # Every split's types, not train's alone: names in train and numbers in validation crashed the names' strip,
    # and a fractional validation label was truncated to a class id.
    kinds = {type(v) for values in raw.values() for v in values}
    missing = {split: sum(v is None for v in values) for split, values in raw.items()}
    if any(missing.values()):
        where = ", ".join(f"{n} of {len(raw[split])} in {split}" for split, n in missing.items() if n)
        raise DataError(f"Some rows have no label (null, or an empty cell): {where}. Remove them or give them a "
                        "label.")
    # JSON's NaN and Infinity parse as floats: not a class, and int() of them raises.
    odd = next((v for split in raw.values() for v in split if isinstance(v, float) and not math.isfinite(v)), None)
    if odd is not None:
        raise DataError(f"Some rows have the label {odd}, which is not a class. Remove them or give them a class id "
                        "(0, 1, ...) or a class name.")
    if kinds == {bool}:  # true/false labels: named as such, in the order of 0 and 1
        raw = {s: [str(v) for v in vs] for s, vs in raw.items()}
        train, kinds = classes_from(raw), {str}
    if kinds <= {int, bool}:
        values = sorted(set(int(v) for v in train))
    elif kinds <= {int, float}:
        bad = next(((split, v) for split, values in raw.items() for v in values if float(v) != int(v)), None)
        if bad:
            raise DataError(f"The label column holds fractional numbers (e.g. {bad[1]} in {bad[0]}): this is a "
                            "classification tool and needs class ids (0, 1, ...) or class names. Bin the values into "
                            "classes first.")
        values = sorted(set(int(v) for v in train))
        raw = {s: [int(v) for v in vs] for s, vs in raw.items()}
    elif kinds <= {str}:
        padded = sum(v != v.strip() for vs in raw.values() for v in vs)
        if padded:
            raw = {s: [v.strip() for v in vs] for s, vs in raw.items()}
            train = classes_from(raw)
            notes.append(f"stripped surrounding whitespace from {padded} label(s)")
            logger.warning("Stripped surrounding whitespace from %d string label(s) ('neg ' is 'neg').", padded)
        values = sorted(set(train))
        folded = {}
        for v in values:
            folded.setdefault(v.casefold(), []).append(v)
        for same in (names for names in folded.values() if len(names) > 1):
            logger.warning("Labels %s differ only in case; they are %d separate classes. Normalise them in the data "
                           "if they mean the same.", " and ".join(repr(n) for n in same), len(same))
    elif not kinds & {int, float, bool, str}:  # lists (multi-label data), records: not one class per text
        example = next(v for values in raw.values() for v in values)
        raise DataError(f"The label column holds {type(example).__name__}s (e.g. {json.dumps(example)[:60]}), not one "
                        "class per text: a label is a class id (0, 1, ...) or a class name. For multi-label data, "
                        "train one classifier per label.")
    else:
        held = "; ".join(f"{split}: {', '.join(sorted({type(v).__name__ for v in values}))}"
                         for split, values in raw.items() if values)
        raise DataError(f"The label column mixes types ({held}). Use integer ids or class names throughout, in "
                        "every split.")
    negative = bool(values) and isinstance(values[0], int) and values[0] < 0
    if negative and registry_names is not None:
        rows = sum(v < 0 for v in train)
        raise DataError(f"{rows} row(s) of train have the label {values[0]}, which a ClassLabel column (this one names "
                        f"{', '.join(registry_names)}) uses for a row without a label: they cannot be trained on. "
                        "Remove them, e.g. with dataset.filter(lambda row: row['label'] >= 0).")
    if len(values) < 2 and not one_class_ok:
        raise DataError(f"Train has a single class ({values[0]!r}); a classifier needs at least two. Check the "
                        "label column, or that the file was not filtered to one class. (To score a model on a file "
                        "of one class: xfer-nlp evaluate --all_rows.)")
    # A ClassLabel's names (or a registry set's) name its ids, also where train lacks some of its classes.
    named = registry_names is not None and isinstance(values[0], int) and 0 <= values[0] <= values[-1] < len(
        registry_names)
    names = tuple(registry_names[v] if named else str(v) for v in values)
    if values == list(range(len(values))):
        mapping = {v: v for v in values}
    else:
        mapping = {v: i for i, v in enumerate(values)}
        if isinstance(values[0], int):
            notes.append(f"label ids {values} are not 0..{len(values) - 1}: mapped in sorted order, named "
                         f"{', '.join(names)}")
            logger.warning("Label ids %s are not contiguous from 0; mapped to 0..%d in sorted order, named %s.",
                           values, len(values) - 1, ", ".join(names))
        if negative:  # -1/1 and -1/0/1 sentiment, as many files write it; datasets' "no label" is a ClassLabel's
            logger.warning("Label %d is taken as a class, as in -1/0/1 sentiment. If it marks rows without a label "
                           "instead, remove those rows.", values[0])
    for split, vs in raw.items():
        unseen = sorted({v for v in vs if v not in mapping}, key=str)
        if unseen:
            raise DataError(f"The {split} split has label(s) {unseen[:5]} that never occur in train "
                            f"(train has {values}). Fix those rows or add examples of that class to train.")
    return {s: [mapping[v] for v in vs] for s, vs in raw.items()}, names, notes


def stratified_subset(labels: list[int] | np.ndarray, n: int, seed: int, at_least: int = 1) -> np.ndarray:
    """Exactly n indices: every class once, then every class a second time and so on up to `at_least` (as far
    as n and the class's examples go), the rest shared out in proportion to the classes' sizes. For one seed a
    smaller n gives a subset of a larger n, at every n: the classes' shares come from one sequence of seats
    (Sainte-Lague's divisor method, where largest remainders can take a seat back from a class as n grows)."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if not len(classes) <= n <= len(labels):
        raise DataError(f"Cannot take {n} examples with every one of the {len(classes)} classes from "
                        f"{len(labels)}: ask for between {len(classes)} and {len(labels)}.")
    floor = np.minimum(at_least, counts)
    first = [c for level in range(at_least) for c in range(len(classes)) if floor[c] > level]
    seat = np.concatenate([np.arange(f, m) for f, m in zip(floor, counts)])  # each later seat's number in its class
    owner = np.repeat(np.arange(len(classes)), counts - floor)
    later = owner[np.argsort(-counts[owner] / (2 * seat + 1), kind="stable")]  # highest priority first
    quota = np.bincount(np.concatenate([first, later])[:n].astype(int), minlength=len(classes))
    chosen = np.concatenate([order[labels[order] == c][:q] for c, q in zip(classes, quota)])
    return np.sort(chosen)


# One partition for every seed, mode and size: a fold's test texts are the same for all of them, so their scores
# compare on the same rows (SentEval fixes its folds' seed likewise).
CV_SEED = 0


def cv_folds(labels: list[int] | np.ndarray, folds: int) -> np.ndarray:
    """Each row's fold, 0..folds-1, stratified as scikit-learn's StratifiedKFold: after a fixed shuffle each class
    is dealt out over the folds in turn, continuing where the previous class stopped, so every fold holds its
    share of each class and the folds' sizes differ by at most one."""
    labels = np.asarray(labels)
    order = np.random.default_rng(CV_SEED).permutation(len(labels))
    fold, dealt = np.empty(len(labels), dtype=int), 0
    for c in np.unique(labels):
        members = order[labels[order] == c]
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


def _test_fold(cfg: RunConfig, texts: dict, labels: dict, names: tuple[str, ...], source: str) -> str:
    """--cv_folds: fold --cv_fold of train becomes the test split (in place); returns the data note."""
    if "test" in texts:
        raise DataError(f"'{source}' has a test split of its own; cross-validation (--cv_folds; compare's --folds) "
                        "makes one from the labelled rows of data without one (mr, subj, a single file). Leave it "
                        "out, or pass its training file alone with --train_file.")
    if len(texts["train"]) < cfg.cv_folds:
        raise DataError(f"Train has {len(texts['train'])} rows, fewer than --cv_folds {cfg.cv_folds}: every fold "
                        "needs texts to test on. Lower --cv_folds.")
    fold = cv_folds(labels["train"], cfg.cv_folds)
    small = [f"{names[c]!r} ({n})" for c, n in enumerate(np.bincount(labels["train"], minlength=len(names)))
             if n < cfg.cv_folds]
    if small:
        raise DataError(f"Class(es) {', '.join(small)} have fewer examples than --cv_folds {cfg.cv_folds}, so some "
                        "fold would train without them. Lower --cv_folds, or add examples of those classes.")
    tested = fold == cfg.cv_fold
    for key, rows in (("test", tested), ("train", ~tested)):
        texts[key] = [t for t, keep in zip(texts["train"], rows) if keep]
        labels[key] = [y for y, keep in zip(labels["train"], rows) if keep]
    return (f"cross-validation: fold {cfg.cv_fold} of folds 0-{cfg.cv_folds - 1} (stratified, the same partition "
            f"for every run) is the test split, {len(texts['test'])} texts; training and validation come from the "
            "others")


def _describe_feature(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    if dtype is not None:
        return f"values of type {dtype}"
    return f"{type(feature).__name__.lower()}s (lists or nested records)" if not isinstance(feature, dict) else \
        "nested records (structs)"


# The run options load_text_data reads that decide what the training split holds (max_train_samples and the seed
# only pick a subset of it): compare reads each data source its variants name once, before the first cell.
DATA_FIELDS = ("dataset_name", "dataset_config_name", "data_dir", "train_file", "validation_file", "test_file",
               "text_column", "text_pair_column", "label_column", "validation_split_ratio", "cv_folds", "cv_fold")


def load_text_data(cfg: RunConfig, hold_out: bool = True, scored_only: bool = False) -> TextData:
    """Read, clean and split the data named by the config. Data without a validation split gets a seeded stratified
    hold-out of train; with `hold_out=False` (evaluate --all_rows) its rows become the validation split whole.
    `scored_only` (evaluate) takes a folder or Hub dataset of evaluation splits alone (test.jsonl), as they are."""
    raw, registry_names, source, text_col, label_col = _load_raw(cfg, need_train=not scored_only)
    registry_names = registry_names or _class_names(raw, label_col)
    notes = []
    texts, labels = {}, {}
    pair_col = cfg.text_pair_column
    for split, ds in raw.items():
        named = {"text": text_col, "text_pair": pair_col, "label": label_col}
        missing = [f"--{flag}_column '{c}'" for flag, c in named.items() if c is not None and c not in ds.column_names]
        if missing:
            raise DataError(f"The {split} split of '{source}' has no column for {' and '.join(missing)}. Its columns "
                            f"are: {', '.join(ds.column_names)}. Pass --text_column / --label_column to pick them"
                            f"{' (and --text_pair_column for the second text of a pair)' if pair_col else ''}.")
        for flag, col in (("text", text_col), ("text_pair", pair_col)):
            feature = ds.features[col] if col is not None else None
            if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise DataError(f"The {flag.replace('_', ' ')} column '{col}' of the {split} split of '{source}' "
                                f"holds {_describe_feature(feature)}, not strings. Point --{flag}_column at a column "
                                "of plain text, or flatten the data first.")
        # whole columns: datasets 5 returns a lazy Column, per-row reads of which cost ~70 µs each
        t, y = ds[text_col][:], ds[label_col][:]
        if pair_col is not None:  # a pair is one example: (text, text_pair) travels as one item until the end
            t = [(a, b) if a is not None and b is not None else None for a, b in zip(t, ds[pair_col][:])]
        keep = [i for i, x in enumerate(t) if x is not None and all(str(part).strip() for part in _parts(x))]
        if not keep:
            raise DataError(f"Every text in the {split} split of '{source}' is empty or whitespace"
                            f"{' (or its pair is)' if pair_col else ''}.")
        if len(keep) < len(t):
            what = "example(s) with an empty text or pair" if pair_col else "empty text(s)"
            notes.append(f"dropped {len(t) - len(keep)} {what} from {split}")
            logger.warning("Dropped %d %s from %s.", len(t) - len(keep),
                           what.replace("empty", "empty or whitespace-only"), split)
        texts[split] = [tuple(map(str, t[i])) if pair_col else str(t[i]) for i in keep]
        labels[split] = [y[i] for i in keep]
    labels, names, label_notes = _labels_to_ids(labels, registry_names,
                                                one_class_ok=not hold_out or "train" not in texts)
    notes += label_notes
    if cfg.cv_folds:
        if "train" not in texts:
            raise DataError(f"'{source}' has no train split for cross-validation (--cv_folds) to cut folds from. "
                            "Leave --cv_folds out to score its splits as they are.")
        notes.append(_test_fold(cfg, texts, labels, names, source))

    if "train" not in texts:
        notes.append(f"no train split: scoring {' and '.join(texts)} as {'they are' if len(texts) > 1 else 'it is'}")
    elif "validation" not in texts and not hold_out:
        texts["validation"], labels["validation"] = texts.pop("train"), labels.pop("train")
        notes.append(f"no validation split: scoring all {len(texts['validation'])} rows as validation")
    elif "validation" not in texts:
        held_out = round(len(texts["train"]) * cfg.validation_split_ratio)
        if held_out < len(names):
            raise DataError(f"Train has too few examples ({len(texts['train'])}) for a {cfg.validation_split_ratio:.0%} "
                            f"validation hold-out ({held_out}) to hold each of the {len(names)} classes. Raise "
                            "--validation_split_ratio, or give a validation file beside train.")
        val_idx = stratified_subset(labels["train"], held_out, cfg.seed)
        is_val = np.zeros(len(texts["train"]), dtype=bool)
        is_val[val_idx] = True
        texts["validation"] = [x for x, v in zip(texts["train"], is_val) if v]
        labels["validation"] = [x for x, v in zip(labels["train"], is_val) if v]
        texts["train"] = [x for x, v in zip(texts["train"], is_val) if not v]
        labels["train"] = [x for x, v in zip(labels["train"], is_val) if not v]
        lost = sorted(set(range(len(names))) - set(labels["train"]))
        if lost:  # a class of one example: the hold-out took its only one (as scikit-learn, refuse rather than drop)
            counts = ", ".join(f"{names[c]!r} ({labels['validation'].count(c)} in all)" for c in lost)
            raise DataError(f"Too few examples of {counts} to hold out a validation split and keep each class in "
                            "train. Add examples of such a class, remove it, or give a validation file beside train.")
        notes.append(f"no validation split: held out a seeded stratified {cfg.validation_split_ratio:.0%} of train")

    if cfg.max_train_samples is not None:
        available = len(texts["train"])
        if cfg.max_train_samples > available:
            raise DataError(f"--max_train_samples {cfg.max_train_samples} is larger than the {available} training "
                            "examples available. Lower it, or leave it out to use them all.")
        if cfg.max_train_samples < len(names):
            raise DataError(f"--max_train_samples {cfg.max_train_samples} is fewer than the {len(names)} classes: a "
                            "subset must hold at least one example of each. Raise it.")
        # Two of each class where the size allows: one example of a class gives contrastive no same-label pair
        # (it refuses such data) and every mode a single point to learn the class from.
        keep = stratified_subset(labels["train"], cfg.max_train_samples, cfg.seed, at_least=2)
        notes.append(f"training on a seeded stratified subset of exactly {len(keep)} of {available} examples")
        texts["train"] = [texts["train"][i] for i in keep]
        labels["train"] = [labels["train"][i] for i in keep]

    notes += _also_in_train(texts)
    splits = DatasetDict({s: Dataset.from_dict(_columns(texts[s], labels[s]))
                          for s in ("train", "validation", "test") if s in texts})
    return TextData(splits, names, source, tuple(notes))


def text_pairs(split: Dataset) -> list[str] | None:
    """A split's second texts, where its examples are pairs (--text_pair_column); else None."""
    return split["text_pair"][:] if "text_pair" in split.column_names else None


def _parts(text: str | tuple[str, str]) -> tuple[str, ...]:
    return text if isinstance(text, tuple) else (text,)


def _columns(texts: list, labels: list) -> dict[str, list]:
    """A split's columns: text and label, and text_pair where each example is a (text, text_pair) pair."""
    if texts and isinstance(texts[0], tuple):
        return {"text": [a for a, _ in texts], "text_pair": [b for _, b in texts], "label": labels}
    return {"text": texts, "label": labels}


def _also_in_train(texts: dict[str, list]) -> list[str]:
    """Evaluation texts that training also sees (case and spacing aside) score what was memorised as if it were
    generalisation. Some sets hold such repeats by nature (trec's short questions: 11 of its 500 test questions), so
    this is said, once, as a note that the run logs and records, not refused. Only the evaluation splits are held in a
    set; train is scanned once."""
    def key(text: str | tuple[str, str]) -> str:
        return "\t".join(" ".join(part.casefold().split()) for part in _parts(text))

    keys = {s: [key(t) for t in texts[s]] for s in ("validation", "test") if s in texts}
    if "train" not in texts or not keys:
        return []
    wanted = {k for split_keys in keys.values() for k in split_keys}
    seen = {k for k in map(key, texts["train"]) if k in wanted}
    notes = []
    for split, split_keys in keys.items():
        n = sum(k in seen for k in split_keys)
        if n:
            notes.append(f"{n} of {len(texts[split])} {split} texts also occur in train (ignoring case and spacing), "
                         f"so the {split} figures partly measure memorisation; remove them from one side for a "
                         "clean estimate")
    return notes


def iter_texts(path: str | Path, text_column: str = "text", pair_column: str | None = None):
    """Texts to predict on, one at a time (a file of millions never sits in a list): .txt (one a line, blank lines
    skipped), "-" for standard input read the same way, or any data format with a text column (read by datasets'
    streaming reader, a block of rows at a time); with `pair_column`, (text, text_pair) pairs from such a file. A
    missing value comes through as None, which predict refuses naming its position. A file that is not what its
    name says, or lacks a column, is refused before the first text; a malformed row further down, when reached."""
    kinds = (f".txt (one text a line) or a data file with a text column ({', '.join(FORMATS)}), the text ones also "
             f"compressed ({', '.join(COMPRESSIONS)})")
    stdin = str(path) == "-"  # the Unix convention; a file named "-" is still reachable as ./-
    path = Path(path)
    suffix = file_kind(path)[0]
    # A pipe (bash's `--input <(...)`), a FIFO or a device is read as standard input is: one text a line.
    lines = stdin or suffix == ".txt" or (path.exists() and not path.is_file() and not path.is_dir())
    if pair_column is not None and lines:
        raise DataError(f"--text_pair_column reads pairs from a data file with both columns ({', '.join(FORMATS)}); "
                        f"'{'-' if stdin else path}' holds one text a line.")
    if not stdin and path.is_dir():
        raise DataError(f"--input '{path}' is a folder. Pass a file of texts: {kinds}, or - for standard input.")
    if not stdin and not path.exists():
        raise DataError(f"--input '{path}' does not exist. Check the path.")
    if not lines and suffix not in FORMATS:
        raise DataError(f"--input '{path}' has extension '{suffix or path.suffix}', which predict cannot read. Use "
                        f"{kinds}.")
    if stdin:
        return _text_lines(sys.stdin.buffer, "Standard input")
    if lines:
        def lines():
            compressed = path.is_file() and file_kind(path)[1] is not None  # a pipe is read as it comes
            with open_binary(path) if compressed else open(path, "rb") as f:
                try:
                    yield from _text_lines(f, f"'{path}'")
                except DECOMPRESSION_ERRORS as e:
                    if not compressed:
                        raise
                    raise _not_decompressible(path, e) from None
        return lines()
    # Streamed: datasets reads the file a block at a time (a million texts never sit in memory, as a Dataset would).
    blocks = iter(_load_file(path, streaming=True).iter(batch_size=8192))

    def next_block():
        try:
            return next(blocks, None)
        except Exception as e:  # a malformed row further down the file: the same message as one at the top
            raise _cache_refused(e) or _unreadable(path, FORMATS[suffix], e) from None

    block = next_block()
    if block is None:
        raise DataError(f"'{path}' has no rows. Put the texts to label in it.")
    for flag, name in (("text_column", text_column), ("text_pair_column", pair_column)):
        if name is not None and name not in block:
            raise DataError(f"'{path}' has no column '{name}'; its columns are {', '.join(block)}. Pass --{flag}.")

    def text(t):
        return t if t is None or isinstance(t, str) else str(t)

    def column(block):
        while block is not None:
            if pair_column is None:
                yield from map(text, block[text_column])
            else:
                yield from ((text(a), text(b)) for a, b in zip(block[text_column], block[pair_column]))
            block = next_block()
    return column(block)


def _text_lines(binary, name: str):
    """A text stream's lines as texts, blank lines skipped, decoded as UTF-8 whatever the locale says: line by line,
    so that a byte that is not UTF-8 is named with its line instead of ending in a UnicodeDecodeError traceback."""
    for number, raw in enumerate(binary, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{name} is not UTF-8: byte {raw[e.start]:#x} on line {number} cannot be decoded. "
                            "Re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
        if line.strip():
            yield line


def write_predictions_file(path: str | Path, rows) -> int:
    """predict's rows into a file: a table for .csv and .tsv (text, text_pair for pairs, label, score, then one
    score_<label> column a class, for a spreadsheet), JSON Lines for any other name. Atomic, streamed; returns
    how many rows were written."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv"):
        return write_jsonl(path, rows)
    from .runfolder import atomic_write

    n, columns = 0, None
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        table = csv.writer(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for row in rows:
            if columns is None:
                columns = [k for k in ("text", "text_pair", "label", "score") if k in row]
                table.writerow(columns + [f"score_{label}" for label in row["scores"]])
            table.writerow([row[k] for k in columns] + list(row["scores"].values()))
            n += 1
    return n


def write_jsonl(path: str | Path, rows) -> int:
    """Write rows (any iterable) as JSONL, atomically: the file appears, complete, once the last row is written.
    Returns how many rows were written."""
    from .runfolder import atomic_write

    n = 0
    with atomic_write(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
