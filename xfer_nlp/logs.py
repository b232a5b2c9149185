"""Who speaks and where it is written: the main process, and one logging setup for run, evaluate and compare."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def is_main_process() -> bool:
    """Accelerate's answer once its state exists; before that the launcher's rank, so that a message printed before
    any run (a bad flag) does not set up a process group just to ask."""
    from accelerate import PartialState

    if PartialState._shared_state:
        return PartialState().is_main_process
    return int(os.environ.get("RANK", "0")) == 0


def setup(name: str, log_file: Path, main: bool) -> logging.Logger:
    """Logger `name` ("xfer_nlp" for a run or an evaluation, "xfer_nlp.compare" for a grid, which keeps its own
    handlers because each cell's run resets those of "xfer_nlp"): on the main process INFO to stderr and to
    `log_file`; elsewhere errors only, and datasets' progress bars off. Handlers from an earlier setup of the same
    logger (a notebook, a grid's cells) are replaced, not added to."""
    import datasets
    import transformers

    logger = logging.getLogger(name)
    for h in [h for h in logger.handlers if getattr(h, "_xfer_nlp", False)]:
        logger.removeHandler(h)
        h.close()
    logger.propagate = False
    transformers.utils.logging.set_verbosity_error()  # its load reports (new head weights) are expected here
    if not main:
        logger.setLevel(logging.ERROR)
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        return logger
    logger.setLevel(logging.INFO)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for h in (logging.StreamHandler(sys.stderr), logging.FileHandler(log_file, encoding="utf-8")):
        h.setFormatter(fmt)
        h._xfer_nlp = True
        logger.addHandler(h)
    return logger
