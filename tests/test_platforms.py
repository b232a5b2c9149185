"""Off Linux: what a machine without the POSIX file lock (Windows) is told, and macOS's peak memory in MB."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from xfer_nlp import api


def test_without_fcntl_the_first_use_of_a_run_folder_says_to_use_wsl():
    """Windows has no fcntl: a run ended in "No module named 'fcntl'", which does not say what to do."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import xfer_nlp\n"  # the package itself imports (its names load on first use)
            "try:\n    xfer_nlp.run\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "xfer_nlp runs on Linux and macOS: it holds a run's folder with a POSIX file lock (fcntl), which " \
           "Windows lacks. On Windows, run it in WSL." in result.stdout


@pytest.mark.parametrize("platform,per_mb", [("darwin", 2**20), ("linux", 1024)])
def test_peak_memory_without_proc_reads_getrusage_in_its_platform_s_unit(platform, per_mb, monkeypatch):
    """Without /proc (macOS), the peak comes from getrusage, whose ru_maxrss macOS counts in bytes and Linux in kB:
    read as kB everywhere, a Mac's peak showed 1,024 times too large."""
    import resource

    def no_proc(_path):
        def read_text():
            raise FileNotFoundError("/proc/self/status")
        return SimpleNamespace(read_text=read_text)

    monkeypatch.setattr(api, "Path", no_proc)
    monkeypatch.setattr(api.sys, "platform", platform)
    accelerator = SimpleNamespace(device=SimpleNamespace(type="cpu"))
    peak = api._peak_memory_mb(accelerator)
    assert peak == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb
