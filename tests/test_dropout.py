"""The CPU training lever: dropout from 16-bit random masks must be dropout, and leave the model stock."""

import pytest
import torch
from torch import nn

from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.dropout import Dropout, cpu_dropout, dropout
from xfer_nlp.modes import build


def test_dropout_keeps_one_minus_p_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.randn(1000, 1001, requires_grad=True)
    y = dropout(x, 0.1)
    keep = y != 0
    scale = 65536 / (65536 - 6554)  # p = 0.1 on 16-bit levels: 6554 / 65536
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # 6 standard deviations of a million draws
    assert torch.allclose(y[keep], x[keep] * scale)
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, keep * scale)  # the gradient flows through the kept elements only
    assert not torch.equal(dropout(x, 0.1) != 0, keep)  # a new mask every call
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    assert dropout(x.detach().bfloat16(), 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0)


def test_dropout_masks_follow_the_seed():
    # Exact resume restores torch's RNG state; the masks must come from it.
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), first)


def test_cpu_dropout_swaps_in_for_training_and_leaves_the_model_stock(tiny_model_dir):
    model = build(resolve(RunConfig(mode="finetune", model_name_or_path=str(tiny_model_dir))), ("a", "b")).model
    stock = [m for m in model.modules() if type(m) is nn.Dropout]
    assert len(stock) >= 3  # embeddings, and two per layer
    batch = {"input_ids": torch.tensor([[2, 5, 7, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    model.train()
    with cpu_dropout(model):
        assert all(type(m) is Dropout for m in stock)
        torch.manual_seed(0)
        dropped = model(**batch).logits
        torch.manual_seed(0)
        assert torch.equal(model(**batch).logits, dropped)
        for m in stock:
            m.p = 0.0
        plain = model(**batch).logits
    assert all(type(m) is nn.Dropout for m in stock)
    assert torch.equal(model(**batch).logits, plain)  # without dropout: the same function as stock
    assert not torch.allclose(plain, dropped)
