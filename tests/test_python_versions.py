"""The code runs on the oldest Python that pyproject.toml admits, not only on the one the suite runs under."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_code_needs_a_python_newer_than_requires_python():
    """vermin reads what each module uses of the language and the standard library (hashlib.file_digest, 3.11, had
    crept into checkpoint.py and would have failed every checkpoint on 3.10, the default Python of Ubuntu 22.04)."""
    oldest = re.search(r'^requires-python = ">=(\d+\.\d+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    checked = subprocess.run([str(Path(sys.executable).parent / "vermin"), f"-t={oldest}-", "--violations", "--no-tips",
                              "--eval-annotations", "xfer_nlp", "recipes", "benchmarks", "tests"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "Target versions not met" not in checked.stdout, checked.stdout[-3000:]
