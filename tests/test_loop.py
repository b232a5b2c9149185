"""The training loop's parts: the CPU embedding-gradient lever changes nothing but speed; kept weights are checked."""

import contextlib
import json
import platform
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.loop import reused_embedding_grad
from xfer_nlp.modes import build


def train_steps(model_dir, reuse: bool, accumulate: int) -> tuple[dict, list[int], bool]:
    """Four optimizer steps of fused AdamW: the weights, the gradient's address at each step, whether the lever was on."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    torch.manual_seed(0)
    model = build(resolve(RunConfig(mode="finetune", model_name_or_path=str(model_dir))), ("a", "b")).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(1)
    addresses = []
    with reused_embedding_grad(accelerator, model) if reuse else contextlib.nullcontext():
        lever_on = model.get_input_embeddings().sparse
        for _ in range(4 * accumulate):
            ids = torch.randint(0, weight.shape[0], (8, 12), generator=generator)
            ids[:, -3:] = 0  # padding: its row gets no gradient
            batch = {"input_ids": ids, "attention_mask": (ids != 0).long(),
                     "labels": torch.randint(0, 2, (8,), generator=generator)}
            with accelerator.accumulate(model):
                accelerator.backward(model(**batch).loss)
                if accelerator.sync_gradients:
                    assert weight.grad.layout == torch.strided  # fused AdamW gets the dense gradient it needs
                    addresses.append(weight.grad.data_ptr())
                optimizer.step()
                optimizer.zero_grad()
    assert not model.get_input_embeddings().sparse  # the model leaves training as it came
    return {k: v.clone() for k, v in model.state_dict().items()}, addresses, lever_on


def test_reused_embedding_grad_trains_bit_identically_in_one_buffer(tiny_model_dir):
    dense, _, _ = train_steps(tiny_model_dir, reuse=False, accumulate=1)
    reused, addresses, lever_on = train_steps(tiny_model_dir, reuse=True, accumulate=1)
    assert lever_on
    assert dense.keys() == reused.keys()
    assert all(torch.equal(dense[k], reused[k]) for k in dense)
    assert len(set(addresses)) == 1  # the same memory every step: nothing new to map and fault in


def test_gradient_accumulation_keeps_the_dense_gradient(tiny_model_dir):
    # Autograd would add a later micro-batch's rows into the buffer one by one: same sum, other float order.
    dense, _, _ = train_steps(tiny_model_dir, reuse=False, accumulate=2)
    reused, _, lever_on = train_steps(tiny_model_dir, reuse=True, accumulate=2)
    assert not lever_on
    assert all(torch.equal(dense[k], reused[k]) for k in dense)


ALLOCATOR_CHECK = """
import ctypes, json, sys, torch
from xfer_nlp import allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                 "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info

def mapped_while_held():  # bytes glibc mapped on their own while a 100 MB tensor lives
    x = torch.empty(100 * 2**20, dtype=torch.uint8)
    held = mallinfo2().hblkhd
    del x
    return held

before = mapped_while_held()
took = allocator.keep_freed_memory() if sys.argv[1] == "on" else False
print(json.dumps({"took": took, "before": before, "after": mapped_while_held()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_keep_freed_memory_serves_big_tensors_from_the_heap():
    """--keep_freed_memory's lever: afterwards a 100 MB tensor is no longer mapped (and unmapped) on its own."""
    for setting in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_CHECK, setting], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.splitlines()[-1])
        assert result["before"] >= 100 * 2**20  # glibc's default: a block this big is mapped on its own
        assert result["took"] is (setting == "on")
        assert (result["after"] >= 100 * 2**20) is (setting == "off")


def test_the_kept_weights_are_checked_to_be_the_best_evaluations(tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from xfer_nlp.checkpoint import CheckpointError
    from xfer_nlp.loop import _best_weights

    best = tmp_path / "best.safetensors"
    run = SimpleNamespace(progress=SimpleNamespace(best_step=40), best_file=best)
    with pytest.raises(CheckpointError, match=r"best evaluation \(step 40\).*but it is missing.*before step 40"):
        _best_weights(run)
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(weights, best, metadata={"step": "60"})  # a later evaluation's file, left by another run
    with pytest.raises(CheckpointError, match="holds the weights of step 60"):
        _best_weights(run)
    save_file(weights, best)  # no step recorded
    with pytest.raises(CheckpointError, match="does not say which step"):
        _best_weights(run)
    best.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="could not be read"):
        _best_weights(run)
    save_file(weights, best, metadata={"step": "40"})
    assert torch.equal(_best_weights(run)["w"], weights["w"])
