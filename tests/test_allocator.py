"""Which malloc serves the process: a preloaded tcmalloc is seen and --keep_freed_memory then does nothing; a
run that trains on a CPU and a file labelled on a CPU under glibc's malloc are told how to run under tcmalloc,
other runs are not."""

import ctypes.util
import os
import subprocess
import sys

import pytest

import xfer_nlp
from xfer_nlp import allocator

TCMALLOC = ctypes.util.find_library("tcmalloc_minimal")
REPORT = ("from xfer_nlp import allocator; print(allocator.malloc(), allocator.preloaded(), "
          "allocator.keep_freed_memory(), allocator.tcmalloc_hint('finetune', 512, 'cpu') is None, "
          "allocator.predict_hint('cpu') is None)")


def in_child(**env) -> list[str]:
    """What a fresh process started with `env` reports (a preload only acts on a process it starts)."""
    return subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split()


def test_under_glibc_the_flag_takes_and_a_cpu_training_run_gets_the_hint(monkeypatch):
    assert in_child(LD_PRELOAD="") == ["glibc", "None", "True", "False", "False"]  # this suite runs on glibc Linux
    monkeypatch.setattr(allocator, "preloaded", lambda: None)  # as in that child, whatever runs this suite
    hint = allocator.tcmalloc_hint("finetune", 512, "cpu")
    assert "LD_PRELOAD=libtcmalloc_minimal.so.4" in hint and "apt-get install libtcmalloc-minimal4" in hint
    assert "1.8x" in hint
    # every trained mode, with the figure measured at its length
    assert "1.1-1.26x" in allocator.tcmalloc_hint("lora", 128, "cpu")
    assert "LD_PRELOAD" in allocator.tcmalloc_hint("contrastive", 64, "cpu")
    # not the probe (a few percent), not a GPU
    assert allocator.tcmalloc_hint("probe", 512, "cpu") is None
    assert allocator.tcmalloc_hint("finetune", 512, "cuda") is None
    # and labelling a file on a CPU (`xfer-nlp predict --input`), not on a GPU
    assert "LD_PRELOAD=libtcmalloc_minimal.so.4" in allocator.predict_hint("cpu")
    assert allocator.predict_hint("cuda") is None


@pytest.mark.skipif(TCMALLOC is None, reason="tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
def test_a_preloaded_tcmalloc_is_seen_and_neither_flag_nor_hint_applies():
    assert in_child(LD_PRELOAD=TCMALLOC) == ["tcmalloc", "tcmalloc", "False", "True", "True"]


def test_a_run_records_who_served_malloc_and_a_cpu_training_run_logs_the_hint(tiny_run):
    run = xfer_nlp.run(mode="finetune", max_steps=2, **tiny_run)
    assert run.results["malloc"] == (allocator.preloaded() or "glibc")  # a CPU run's seconds depend on it
    hinted = run.results["malloc"] == "glibc"
    assert ("LD_PRELOAD=libtcmalloc_minimal.so.4" in (run.output_dir / "train.log").read_text()) == hinted
