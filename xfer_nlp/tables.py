"""Data handed over in memory (a notebook's DataFrame, a datasets Dataset): saved once as a dataset folder.

Every command reads its data from a name or a path, and records that name in config_xfer.yaml, results.json and the
model card, so a run can be resumed, repeated and compared. In-memory data gets a path the same way: its splits are
written as parquet into a folder named by their content's hash, under the xfer_nlp cache. The same data gives the
same folder, so calling again (a resume, a compare grid continued) finds the run's own data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from functools import partial
from pathlib import Path

from .data import SPLIT_NAMES
from .errors import ConfigError, DataError

SOURCES = ("dataset_name", "train_file", "validation_file", "test_file")  # the flags that otherwise name the data
ACCEPTED = ("a datasets Dataset or DatasetDict, a pandas DataFrame, a list of row dicts, or a dict of split name "
            "(train, validation, test) to one of those (another table: its to_pandas())")


def cache_home() -> Path:
    """xfer_nlp's cache: $XDG_CACHE_HOME/xfer_nlp, else ~/.cache/xfer_nlp (the probe's features live there too)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xfer_nlp"


def is_dataframe(obj) -> bool:
    """A pandas DataFrame, known without importing pandas."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns")


def with_data(data, config, overrides: dict) -> dict:
    """`overrides` with dataset_name set to in-memory `data`'s folder (save); `data` None leaves them as they are.
    Refused beside a flag that names other data: one of them would be ignored."""
    if data is None:
        return overrides
    from .config import RunConfig

    default = RunConfig()
    named = [k for k in SOURCES if overrides.get(k) is not None or
             (config is not None and getattr(config, k) != getattr(default, k))]
    if named:
        raise ConfigError(f"data= and {', '.join(named)} both name the data to read: pass one of them.")
    return {**overrides, "dataset_name": str(save(data))}


def save(data, root: Path | None = None) -> Path:
    """`data` (ACCEPTED; one table is the train split) written as ROOT/data/in-memory-<hash>/<split>.parquet, once: the
    folder, complete, appears by one rename, and a folder already there for the same content is used as it is."""
    tables = _splits(data)
    folder = (root or cache_home()) / "data"
    tmp = folder / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        digest = hashlib.sha256()
        for split, table in tables.items():
            path = tmp / f"{split}.parquet"
            table.to_parquet(path)
            digest.update(split.encode() + b"\0" + path.read_bytes())
        final = folder / f"in-memory-{digest.hexdigest()[:12]}"
        if not final.is_dir():
            try:
                os.rename(tmp, final)
            except OSError:  # another process (a launch's other rank) put the same folder there first
                if not final.is_dir():
                    raise
        return final
    except OSError as e:
        raise DataError(f"Could not save the data handed over in memory under '{folder}' ({e.strerror or e}). Point "
                        "XDG_CACHE_HOME at a folder you may write, with room for the data, or save the data as files "
                        "and pass their folder as dataset_name.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _splits(data) -> dict:
    """Each split's Dataset, by its canonical name (validation for dev, val, valid)."""
    from datasets import DatasetDict

    given = dict(data) if isinstance(data, (dict, DatasetDict)) else {"train": data}
    if not given:
        raise DataError(f"data= is empty. Pass {ACCEPTED}.")
    tables, named = {}, {}
    for name, table in given.items():
        split = next((s for s, aliases in SPLIT_NAMES.items() if str(name).lower() in aliases), None)
        if split is None:
            raise DataError(f"data= has a split named {name!r}. Name each split train, validation (or dev, val, "
                            "valid) or test; for a table of columns, pass it as a DataFrame or a Dataset.")
        if split in tables:
            raise DataError(f"data= gives the {split} split twice ({named[split]!r} and {name!r}). Pass it once.")
        tables[split], named[split] = _table(table, name), name
    return tables


def _table(table, split: str):
    """One split as a datasets Dataset."""
    from datasets import Dataset, IterableDataset

    if isinstance(table, Dataset):
        return table
    if is_dataframe(table):
        convert = partial(Dataset.from_pandas, table, preserve_index=False)
    elif isinstance(table, list) and table and all(isinstance(row, dict) for row in table):
        convert = partial(Dataset.from_list, table)
    elif isinstance(table, IterableDataset):
        raise DataError(f"data['{split}'] is a streamed IterableDataset, which has no end to save or count. Take the "
                        "rows you want as a Dataset (Dataset.from_generator, or .take(n) then Dataset.from_list), or "
                        "pass the files' folder as dataset_name.")
    else:
        what = "an empty list" if isinstance(table, list) and not table else type(table).__name__
        raise DataError(f"data['{split}'] is {what}. Pass {ACCEPTED}.")
    try:
        return convert()
    except Exception as e:  # pyarrow's ArrowTypeError and ArrowInvalid, datasets' ValueError: one meaning here
        raise DataError(f"data['{split}'] could not be made a table ({type(e).__name__}: {str(e)[:200]}). Give each "
                        "column values of one type (e.g. df['text'].astype(str)) and a name of its own.") from None
