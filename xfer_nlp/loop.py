"""The Accelerate training loop, written out: forward, backward, step, evaluate each epoch, keep the best epoch."""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from .errors import XferError
from .metrics import classification_metrics
from .modes import param_groups

logger = logging.getLogger(__name__)


class TrainingDiverged(XferError):
    """The loss became NaN or infinite."""


@torch.no_grad()
def evaluate(accelerator, model, loader, num_labels: int) -> dict[str, float]:
    model.eval()
    preds, labels = [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        # gather_for_metrics drops the samples Accelerate duplicated to even out the last batch across processes.
        p, y = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        preds.append(p.cpu())
        labels.append(y.cpu())
    preds, labels = torch.cat(preds), torch.cat(labels)
    assert len(labels) == len(loader.dataset), "gather_for_metrics must count every example exactly once"
    return classification_metrics(preds.numpy(), labels.numpy(), num_labels)


def train(accelerator, cfg, model, train_dl, eval_dls: dict, num_labels: int) -> tuple[dict, list[dict]]:
    """Train `model` in place and leave the best epoch's weights in it; returns (best metrics, per-epoch history)."""
    sampler = train_dl.batch_sampler
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    eval_dls = {name: accelerator.prepare(dl) for name, dl in eval_dls.items()}
    # Counted on the sharded loader; the prepared scheduler steps once per process per optimizer step.
    local_steps = max(1, math.ceil(math.ceil(len(train_dl) / cfg.gradient_accumulation_steps) * cfg.num_train_epochs))
    total = local_steps * accelerator.num_processes
    scheduler = accelerator.prepare(get_scheduler("linear", optimizer, num_training_steps=total,
                                                  num_warmup_steps=math.ceil(cfg.warmup_ratio * total)))

    history, best, best_state = [], None, None
    bar = tqdm(total=local_steps, desc=f"Training ({cfg.mode})", disable=not accelerator.is_local_main_process)
    step, epoch, running, seen = 0, 0, torch.zeros((), device=accelerator.device), 0
    while step < local_steps:
        sampler.set_epoch(epoch)
        model.train()
        for batch in train_dl:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += loss.detach()
            seen += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % cfg.logging_steps == 0 or step == local_steps:
                mean_loss = (accelerator.reduce(running, "mean") / seen).item()  # the only host sync per log
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(f"The training loss became {mean_loss} at step {step} (epoch {epoch + 1}). "
                                           f"Lower --learning_rate (now {cfg.learning_rate}) or use fp32 / bf16 "
                                           "instead of fp16.")
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                accelerator.log({"train/loss": mean_loss, "train/learning_rate": lr, "train/epoch": epoch}, step=step)
                running.zero_()
                seen = 0
            if step >= local_steps:
                break
        epoch += 1
        metrics = {name: evaluate(accelerator, model, dl, num_labels) for name, dl in eval_dls.items()}
        record = {"epoch": epoch, "step": step, **{f"{s}_{k}": v for s, m in metrics.items() for k, v in m.items()}}
        history.append(record)
        accelerator.log({f"eval/{k}": v for k, v in record.items() if k not in ("epoch", "step")}, step=step)
        logger.info("Epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                     if isinstance(v, float)))
        if best is None or metrics["validation"]["accuracy"] > best["validation"]["accuracy"]:
            best = {**metrics, "epoch": epoch}
            best_state = {k: v.detach().to("cpu", copy=True)
                          for k, v in accelerator.unwrap_model(model).state_dict().items()}
    bar.close()
    unwrapped = accelerator.unwrap_model(model)
    if history and best["epoch"] != history[-1]["epoch"]:
        logger.info("Keeping epoch %d, the best on validation accuracy.", best["epoch"])
        unwrapped.load_state_dict(best_state)
    return best, history
