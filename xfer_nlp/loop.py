"""The Accelerate training loop, written out: forward, backward, step, evaluate each epoch, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from .checkpoint import Checkpoints, CheckpointError, set_rng_states
from .batches import out_of_memory_explained, per_text, rows_fingerprint
from .dropout import cpu_dropout
from .families import model_inputs
from .config import MODE_ONLY, RESUME_MAY_DIFFER
from .modes import MAX_EPOCHS
from .errors import ConfigError, Interrupted, TrainingDiverged
from .metrics import scalars
from .runfolder import CHECKPOINTS, atomic_write, disk_full_explained, save_safetensors
from . import schedules

logger = logging.getLogger(__name__)

# --torch_compile -> torch.compile's arguments. dynamic=True traces once with symbolic batch and length, after which
# a new padded shape (batches.BucketCollator) only records a CUDA graph (milliseconds) instead of compiling again
# (seconds each on an H200's host: RESULTS.md, "CUDA graphs"). The cudagraphs backend cannot: in torch 2.11 it
# replayed a graph recorded at one length on a batch of another (a size-mismatch error), so it compiles each shape.
COMPILE = {"cudagraphs": {"backend": "cudagraphs", "dynamic": False},
           "reduce-overhead": {"backend": "inductor", "mode": "reduce-overhead", "dynamic": True}}


def check_compile(how: str, device) -> None:
    if how != "no" and device.type != "cuda":
        raise ConfigError(f"--torch_compile {how} records CUDA graphs, and this run trains on {device.type}. Run it on "
                          "a CUDA GPU, or leave --torch_compile at no.")


def compiled_step_model(model, how: str):
    """What the training step calls: `model` itself, or with --torch_compile a compiled view of it that marks each
    call as a new step (the graphs may then reuse the last step's output memory).

    Only the training forward (and so its backward) is compiled; evaluation, checkpoints and the export use `model`,
    the same parameters, so their state-dict keys and fp32 rescoring are as without it. (Accelerate's dynamo
    plugin would compile the prepared model itself, and with it every evaluation batch's shape.)
    """
    if how == "no":
        return model
    # transformers sets problem_type at the first forward with labels; set it first (to the same value), or that
    # change would make the compiled step compile a second time.
    config = getattr(getattr(model, "module", model), "config", None)
    if config is not None and getattr(config, "problem_type", "") is None:
        config.problem_type = "single_label_classification"
    # Each padded shape, batch size and unfreezing stage may compile once: more than dynamo's default 8
    # recompilations, after which it would quietly fall back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if COMPILE[how]["dynamic"]:
        # Without duck sizing, a first batch whose length equals its size (32 x 32) does not tie the two into a
        # guard that the next batch fails (torch's own advice in that recompilation's log).
        fx_config.use_duck_shape = False
    compiled = torch.compile(model, **COMPILE[how])

    def step(**inputs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(**inputs)
    return step


# What each annotation of Progress admits from JSON (a float field may hold a whole number; bool is an int to
# Python, so it is admitted only where named).
_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,), "list": (list,)}


@dataclass
class Progress:
    """Where training stands; checkpointed with the model so a resumed run continues at the same batch."""

    epoch: int = 0
    step: int = 0  # optimizer steps on this process
    batches_in_epoch: int = 0  # batches of the current epoch already consumed
    best_epoch: float = 0  # when the best evaluation happened (fractional with --eval_steps)
    best_step: int = 0
    seconds: float = 0.0  # training time so far, across resumptions
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    evals_since_best: int = 0
    stopped_early: bool = False
    losses: list = field(default_factory=list)  # {"step", "epoch", "loss", "learning_rate"} at each log
    # The loss window not yet logged when the checkpoint was written (its sum, averaged over processes, and its
    # batches), so that a resumed run logs the same means as an uninterrupted one.
    window_loss: float = 0.0
    window_batches: int = 0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Fields of the right kinds only: a record that names another field, or holds a string where a count
        goes, is refused by name instead of failing somewhere later in the run."""
        kinds = {f.name: _KINDS[f.type] for f in dataclasses.fields(self)}
        if not isinstance(state, dict) or not state.keys() <= kinds.keys():
            raise CheckpointError(f"The checkpoint's progress record is malformed (fields {sorted(state)[:8]}); "
                                  "resume from another checkpoint or start over.")
        wrong = [f"{k}={v!r:.40}" for k, v in state.items()
                 if not isinstance(v, kinds[k]) or (isinstance(v, bool) and bool not in kinds[k])]
        if wrong:
            raise CheckpointError(f"The checkpoint's progress record is malformed ({', '.join(wrong)}); resume from "
                                  "another checkpoint or start over.")
        for k, v in state.items():
            setattr(self, k, v)


@torch.no_grad()
def predict_logits(accelerator, model, loader, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits, labels) of every text, in data order, gathered from all processes; a text read as several
    windows gets the mean of their logits. Without an accelerator (predict), one process on the model's device."""
    model.eval()
    # A prepared model autocasts by itself under mixed precision; train() rescores the kept weights in fp32.
    return per_text(accelerator, loader, lambda batch: model(**model_inputs(batch)).logits, desc,
                    device=next(model.parameters()).device if accelerator is None else None)


def evaluate(accelerator, model, loader, scorer, desc: str | None = None) -> dict:
    logits, labels = predict_logits(accelerator, model, loader, desc)
    return scorer(logits.argmax(-1).numpy(), labels.numpy())


def world_of(accelerator, cfg, train_dl, eval_dls: dict) -> dict:
    """What a resumed run must share with the interrupted one beyond its config: the processes, the whole batch, and
    the rows it trains on and chooses its kept weights by (a data file edited, or a tokenizer re-saved, between the
    kill and the resume leaves the config as it was)."""
    return {"num_processes": accelerator.num_processes,
            "effective_batch_size": cfg.per_device_train_batch_size * accelerator.num_processes
            * cfg.gradient_accumulation_steps,
            "data": {name: rows_fingerprint(dl.dataset) for name, dl in
                     {"train": train_dl, "validation": eval_dls.get("validation")}.items() if dl is not None}}


def _check_same_run(state: dict, cfg, world: dict) -> None:
    saved = {**state["config"], **state.get("world", {})}
    now = {**cfg.to_dict(), **world}
    # A checkpoint written before the rows were recorded has no "data": the config is all it can be checked on.
    then, rows = saved.pop("data", None), now.pop("data")
    changed = [split for split in rows if then is not None and then.get(split) != rows[split]]
    if changed:
        raise CheckpointError(f"Cannot resume: the {' and '.join(changed)} rows differ from those the checkpoint's "
                              "run read (a data file, the tokenizer or the reading of texts changed since). Resume "
                              "with the data as it was, or start a new run in another --output_dir.")
    # The same folder spelled another way (relative, absolute, through a link) is the same run.
    if isinstance(saved.get("output_dir"), str) and Path(saved["output_dir"]).resolve() == Path(now["output_dir"]).resolve():
        saved["output_dir"] = now["output_dir"]
    # A setting this mode never reads (lora's rank under finetune) cannot change the run, even if its default did.
    ignored = {k for k, modes in MODE_ONLY.items() if now["mode"] not in modes}
    differ = sorted(k for k in now if k not in RESUME_MAY_DIFFER | ignored and saved.get(k) != now[k])
    if differ == ["output_dir"]:  # another run's checkpoint: it goes on only in the folder of its own run
        raise CheckpointError(f"Cannot resume in --output_dir '{now['output_dir']}' from a checkpoint of the run in "
                              f"'{saved['output_dir']}': a run goes on in its own folder. Resume with --output_dir "
                              f"{saved['output_dir']}, or start a new run without --resume_from_checkpoint.")
    if differ:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in differ)
        raise CheckpointError(f"Cannot resume: the run would not be the same ({detail}). Resume with the original "
                              "settings, or start a new run in another --output_dir.")


def logging_interval(cfg, steps: int) -> int:
    """--logging_steps, or by default about 20 logged losses a run, at least one every 50 steps: a curve of a few
    dozen steps still has its points, and a long run's one host sync per log stays rare."""
    return cfg.logging_steps or max(1, min(50, math.ceil(steps / 20)))


def plan_steps(cfg, steps_per_epoch: int, examples: int) -> tuple[int, int | None, str]:
    """(optimizer steps, evaluate every N steps or None for each epoch end, the rule as logged)."""
    if cfg.max_steps:
        steps, plan = cfg.max_steps, f"{cfg.max_steps} (--max_steps)"
    else:
        steps = max(1, math.ceil(steps_per_epoch * cfg.num_train_epochs))
        plan = f"{cfg.num_train_epochs:g} epochs x {steps_per_epoch} = {steps}"
        if cfg.min_train_steps and steps < cfg.min_train_steps:
            epochs = min(MAX_EPOCHS, math.ceil(cfg.min_train_steps / steps_per_epoch))
            steps = max(steps, epochs * steps_per_epoch)
            plan = (f"{examples} examples: training {epochs} epochs = {steps} steps (at least --min_train_steps "
                    f"{cfg.min_train_steps}, at most {MAX_EPOCHS} epochs)")
    every = cfg.eval_steps
    if every is None and steps > 10 * steps_per_epoch:  # many short epochs: ten evaluations, not one an epoch
        every = math.ceil(steps / 10)
    if every is not None:
        if every > steps:
            raise ConfigError(f"--eval_steps {every} is more than the run's {steps} optimizer steps, so it would "
                              f"never evaluate before the end. Use at most {steps}.")
        plan += f"; evaluating every {every} steps and at the last"
    return steps, every, plan


def describe(cfg, model, layout, groups: list[schedules.Group], steps_per_epoch: int) -> tuple[dict, int]:
    """The resolved schedule as logged and saved in results.json, and the last gradual-unfreezing stage."""
    params = dict(model.named_parameters())
    depths = sorted({g.depth for g in groups})
    stage_steps = max(1, round(cfg.unfreeze_interval * steps_per_epoch))
    stages = [{"stage": d, "from_step": d * stage_steps, "from_epoch": round(d * stage_steps / steps_per_epoch, 3),
               "adds": layout.label(d)} for d in depths] if cfg.gradual_unfreezing else []
    return {"lr_scheduler_type": cfg.lr_scheduler_type, "layer_lr_decay": cfg.layer_lr_decay,
            "groups": [{"group": g.label, "lr": g.lr, "weight_decay": g.weight_decay,
                        "params": sum(params[n].numel() for n in g.names)} for g in groups],
            "stages": stages}, (depths[-1] if cfg.gradual_unfreezing else 0)


@contextmanager
def reused_embedding_grad(accelerator, model):
    """On one CPU process, keep the word embeddings' gradient in one buffer across steps instead of a new one a step.

    Autograd's dense embedding gradient is a fresh vocab x hidden tensor every backward pass (tens of MB for the
    embedded encoder), and glibc serves blocks that large from new mappings: zero-filling it faults in every 4 KB
    page, a visible share of a bf16 step (`benchmarks/levers.py --in_run bf16`; RESULTS.md, the levers table).
    Here the embedding emits its sparse gradient (the rows of the batch) and a hook adds it into a buffer that
    stays mapped, which fused AdamW then reads as the usual dense gradient: bit-identical values
    (tests/test_loop.py); full bf16 runs are faster for one buffer's worth of peak memory (RESULTS.md).
    Not under DDP/FSDP, whose gradient hooks expect the dense gradient, nor on GPUs, whose caching
    allocator already reuses the memory, nor with gradient accumulation, where autograd would add later
    micro-batches' rows one by one: the same sum in another order, so not bit-identical.
    """
    embeddings = accelerator.unwrap_model(model).get_input_embeddings()
    if (accelerator.distributed_type != DistributedType.NO or accelerator.device.type != "cpu"
            or accelerator.gradient_accumulation_steps != 1 or not isinstance(embeddings, torch.nn.Embedding)
            or embeddings.sparse or not embeddings.weight.requires_grad):
        yield
        return
    buffer = torch.zeros_like(embeddings.weight)

    def densify(weight):
        buffer.zero_().index_add_(0, weight.grad._indices()[0], weight.grad._values())
        weight.grad = buffer

    embeddings.sparse = True
    hook = embeddings.weight.register_post_accumulate_grad_hook(densify)
    try:
        yield
    finally:
        hook.remove()
        embeddings.sparse = False


@dataclass
class Trained:
    """What `train` leaves besides the kept weights in the model."""

    metrics: dict[str, dict]  # per evaluation split, the kept weights rescored in fp32
    outputs: dict[str, tuple]  # per evaluation split, (logits, labels) in data order: what predictions.jsonl holds
    best_epoch: float
    best_step: int
    stopped_early: bool
    history: list[dict]  # one record per evaluation
    losses: list[dict]  # the training loss at each log (Progress.losses)
    schedule: dict  # parameter groups, learning rates, unfreezing stages (describe)
    resumed: dict | None  # {"from_step", "seconds_before"}: what earlier processes trained, when resumed
    test_seconds: float  # scoring the test split with the kept weights (not training)


@dataclass
class _Run:
    """What one training run holds from its set-up to its end."""

    accelerator: object
    cfg: object
    model: torch.nn.Module
    layout: object
    train_dl: object  # prepared by Accelerate
    sampler: object  # our own batch sampler inside it (batches.LengthGroupedBatchSampler)
    eval_dls: dict
    optimizer: torch.optim.Optimizer
    scheduler: object
    checkpoints: Checkpoints
    world: dict
    steps: int  # optimizer steps on this process
    eval_every: int | None
    log_every: int  # logging_interval
    steps_per_epoch: int
    schedule: dict
    last_stage: int
    ever_trained: list[str]
    params: dict  # name -> parameter, named as in the unwrapped model (DDP's wrapper prefixes "module.")
    step_model: object  # what the training step calls: `model`, or its compiled view (--torch_compile)
    progress: Progress = field(default_factory=Progress)
    resumed: dict | None = None
    thawed: int = -1  # the stage the requires_grad flags are set for; a resumed run starts from none
    window_loss: torch.Tensor | None = None  # this process's loss summed since the last log, kept on the device
    window_batches: int = 0

    @property
    def best_file(self) -> Path:
        return self.checkpoints.folder / "best.safetensors"


def resume_point(accelerator, cfg) -> Path | None:
    """Clear what a killed save left in the run's checkpoint folder, then find the verified checkpoint that
    --resume_from_checkpoint names (None without it). Before the trackers start (api.run): tensorboard is told the
    step the run resumes at, and drops the killed run's events from there on."""
    checkpoints = Checkpoints(Path(cfg.output_dir) / CHECKPOINTS, accelerator, cfg.save_total_limit)
    if accelerator.is_main_process:
        checkpoints.discard_unfinished()
    return checkpoints.resolve(cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint else None


def train(accelerator, cfg, model, layout, train_dl, eval_dls: dict, scorer,
          class_weights: torch.Tensor | None = None, loss_fn=None, on_step=None, resume: Path | None = None) -> Trained:
    """Train `model` in place and leave the best evaluation's weights in it: set up, fit, finish.

    `loss_fn(model, layout, batch)` replaces the classifier's cross-entropy (contrastive mode's cosine loss). With
    no `eval_dls` nothing is scored during training and the last weights are kept. `on_step(step)` is called after
    every optimizer step (benchmarks/levers.py profiles a window of steps with it). `resume` is resume_point's
    checkpoint.
    """
    run = setup(accelerator, cfg, model, layout, train_dl, eval_dls, resume)
    fit(run, scorer, class_weights, loss_fn, on_step)
    return finish(run, scorer)


def setup(accelerator, cfg, model, layout, train_dl, eval_dls: dict, resume: Path | None = None) -> _Run:
    """The optimizer and schedule, everything prepared by Accelerate, and `resume`'s state restored."""
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    groups = schedules.param_groups(model, layout, cfg.learning_rate, cfg.weight_decay, cfg.layer_lr_decay, trainable)
    # Fused AdamW: one kernel for all tensors (faster than foreach on CPUs: the levers table in RESULTS.md).
    optimizer = torch.optim.AdamW([{"params": [params[n] for n in g.names], "lr": g.lr,
                                    "weight_decay": g.weight_decay} for g in groups], lr=cfg.learning_rate,
                                  fused=True)
    checkpoints = Checkpoints(Path(cfg.output_dir) / CHECKPOINTS, accelerator, cfg.save_total_limit)
    world = world_of(accelerator, cfg, train_dl, eval_dls)
    saved = checkpoints.load(resume) if resume else None
    if saved:
        _check_same_run(saved.state, cfg, world)
        _restore(model.load_state_dict, saved.model, "model weights")  # before prepare: every wrapper starts from them
    # Every parameter that will ever train still requires grad here, so DDP registers it; stages freeze after.
    sampler = train_dl.batch_sampler
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if isinstance(model, FSDPModule):  # what the wrap policy made units of
        units = Counter(type(m).__name__.removeprefix("FSDP") for m in model.modules()
                        if isinstance(m, FSDPModule) and m is not model)
        logger.info("FSDP units, each gathered whole only while it computes: %s.",
                    ", ".join([f"{c} x {n}" for n, c in units.items()] + ["the rest of the model"]))
    eval_dls = {name: accelerator.prepare(dl) for name, dl in eval_dls.items()}
    # Counted on the sharded loader; the prepared scheduler steps once per process per optimizer step.
    steps_per_epoch = math.ceil(len(train_dl) / cfg.gradient_accumulation_steps)
    steps, eval_every, plan = plan_steps(cfg, steps_per_epoch, len(sampler.lengths))
    logger.info("Steps: %s.", plan)
    scheduler = accelerator.prepare(schedules.make_scheduler(cfg.lr_scheduler_type, optimizer,
                                                             steps * accelerator.num_processes, cfg.warmup_ratio,
                                                             cfg.stlr_ratio))
    readable, last_stage = describe(cfg, accelerator.unwrap_model(model), layout, groups, steps_per_epoch)
    readable.update(optimizer_steps=steps, plan=plan)  # the epochs and steps that ran, as the log says them
    run = _Run(accelerator, cfg, model, layout, train_dl, sampler, eval_dls, optimizer, scheduler, checkpoints, world, steps,
               eval_every, logging_interval(cfg, steps), steps_per_epoch, readable, last_stage,
               [n for g in groups for n in g.names], params, compiled_step_model(model, cfg.torch_compile))
    if saved:
        _restore(optimizer.load_state_dict, saved.optimizer, "optimizer state")
        _restore(scheduler.load_state_dict, saved.scheduler, "scheduler state")
        if saved.scaler is not None and accelerator.scaler is not None:
            _restore(accelerator.scaler.load_state_dict, saved.scaler, "gradient-scaler state")
        run.progress.load_state_dict(saved.state["progress"])
        set_rng_states(*saved.rng)  # last, as Accelerate's load_state does: nothing after it may draw
        run.resumed = {"from_step": run.progress.step, "seconds_before": round(run.progress.seconds, 2)}
        logger.info("Resumed from %s: epoch %d, step %d, %d batches into the epoch.", saved.path,
                    run.progress.epoch + 1, run.progress.step, run.progress.batches_in_epoch)
    rates = {g["group"]: g["lr"] for g in readable["groups"]}  # a depth's decay and no-decay groups share a rate
    logger.info("Schedule: %s, peak learning rates %s (no weight decay on biases and LayerNorm weights).",
                cfg.lr_scheduler_type, ", ".join(f"{k} {v:.2e}" for k, v in rates.items()))
    if cfg.gradual_unfreezing:
        logger.info("Gradual unfreezing: %s.", ", ".join(f"from epoch {s['from_epoch']:g} + {s['adds']}"
                                                          for s in readable["stages"]))
    return run


def fit(run: _Run, scorer, class_weights: torch.Tensor | None = None, loss_fn=None, on_step=None) -> None:
    """The epochs: forward, backward, step; log, evaluate and checkpoint on schedule; stop early if told to."""
    accelerator, cfg, model, progress = run.accelerator, run.cfg, run.model, run.progress
    forward = run.step_model
    weights = None if class_weights is None else class_weights.to(accelerator.device)
    with cpu_speed_levers(accelerator, model), _explained_stops(run):
        bar = tqdm(total=run.steps, initial=progress.step, desc=f"Training ({cfg.mode})",
                   disable=not accelerator.is_local_main_process)
        run.window_loss = torch.tensor(progress.window_loss, device=accelerator.device)
        run.window_batches = progress.window_batches
        clock = time.perf_counter() - progress.seconds
        if cfg.head_init == "keep" and run.eval_dls and not progress.history:
            # The start is a working classifier: it is scored first, so the kept weights are never worse on
            # validation than where the run began (tiny or off-domain data can make training lose ground).
            _evaluate(run, scorer, clock)
        # A run resumed at its very last step still owes that epoch's end, hence the second condition.
        while not progress.stopped_early and (progress.step < run.steps or progress.batches_in_epoch > 0):
            # Accelerate's loader sets an unwrapped sampler's epoch to its own count of passes at every iter(), and a
            # resumed run's loader has made none: tell both, or a run resumed in epoch 1 replays epoch 1's order.
            run.train_dl.set_epoch(progress.epoch)
            run.sampler.set_epoch(progress.epoch)
            model.train()
            batches = accelerator.skip_first_batches(run.train_dl, progress.batches_in_epoch) \
                if progress.batches_in_epoch else run.train_dl
            for batch in batches:
                if progress.step >= run.steps or progress.stopped_early:
                    break
                if cfg.gradual_unfreezing:
                    stage = schedules.stage_at(progress.step, run.steps_per_epoch, cfg.unfreeze_interval,
                                               run.last_stage)
                    if stage != run.thawed:
                        _thaw(run, stage)
                with accelerator.accumulate(model):
                    if loss_fn is not None:
                        loss = loss_fn(model, run.layout, batch)
                    elif weights is None:
                        loss = forward(**model_inputs(batch), labels=batch["labels"]).loss
                    else:
                        logits = forward(**model_inputs(batch)).logits
                        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weights)
                    accelerator.backward(loss)
                    if cfg.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    run.optimizer.step()
                    run.scheduler.step()
                    run.optimizer.zero_grad()
                progress.batches_in_epoch += 1
                run.window_loss += loss.detach()
                run.window_batches += 1
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(progress.step)
                if progress.step % run.log_every == 0 or progress.step == run.steps:
                    _log_loss(run, bar)
                evaluated = run.eval_every is not None and (progress.step % run.eval_every == 0
                                                            or progress.step == run.steps)
                if evaluated:
                    _evaluate(run, scorer, clock)
                if evaluated or (cfg.save_steps and progress.step % cfg.save_steps == 0):
                    _save_checkpoint(run, clock)  # after the evaluation: a resumed run neither repeats nor misses it
            progress.epoch += 1
            progress.batches_in_epoch = 0
            # Evaluating by steps, a run checkpoints with each evaluation (and --save_steps), not at each epoch end:
            # on small data an epoch is a step or two, and a checkpoint per epoch would cost more than the training.
            if run.eval_every is None:
                _evaluate(run, scorer, clock)
                _save_checkpoint(run, clock)
        if run.window_batches:  # stopped early between logs: the curve ends where training did
            _log_loss(run, bar)
        bar.close()


def finish(run: _Run, scorer) -> Trained:
    """The kept weights back in the model, rescored in fp32 on every evaluation split."""
    accelerator, progress, model = run.accelerator, run.progress, run.model
    # Training is over and the last checkpoint holds the optimizer: free its state (AdamW's two fp32 moments of
    # the trainable weights) so that loading the best epoch, the fp32 rescoring and the export reuse that memory
    # instead of raising the peak. Clearing the state, not accelerator.free_memory(): that one also drops every
    # object the accelerator prepared, the model included.
    run.optimizer.state.clear()
    if progress.best_step != progress.history[-1]["step"]:
        if progress.best_step == 0:
            logger.info("Keeping the starting classifier (step 0): no step improved on its validation %s.",
                        run.cfg.metric_for_best_model)
        else:
            logger.info("Keeping epoch %g (step %d), the best on validation %s.", progress.best_epoch,
                        progress.best_step, run.cfg.metric_for_best_model)
        accelerator.wait_for_everyone()
        _restore(lambda state: _load_whole(accelerator, model, state), _best_weights(run), "kept weights")
    # Rescored without autocast, the final metrics are exactly what the exported fp32 model computes in pipeline()
    # (under mixed precision the per-evaluation history keeps the scores that chose the weights), and the logits
    # behind them are what predictions.jsonl reports.
    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    outputs, test_seconds = {}, 0.0
    for name, dl in run.eval_dls.items():
        start = time.perf_counter()
        outputs[name] = predict_logits(accelerator, plain, dl, f"Scoring {name}")
        if name != "validation":  # the test split, scored here for the first time: reporting, not training
            test_seconds += time.perf_counter() - start
    metrics = {name: scorer(logits.argmax(-1).numpy(), labels.numpy()) for name, (logits, labels) in outputs.items()}
    if accelerator.mixed_precision != "no" and metrics:  # contrastive's pair loop has no split to rescore
        logger.info("Epoch %g rescored in fp32: %s", progress.best_epoch, ", ".join(
            f"{s}_{k} {v:.4f}" for s, m in metrics.items() for k, v in scalars(m).items()))
    return Trained(metrics, outputs, progress.best_epoch, progress.best_step, progress.stopped_early,
                   progress.history, progress.losses, run.schedule, run.resumed, round(test_seconds, 4))


def _best_weights(run: _Run) -> dict[str, torch.Tensor]:
    """The best evaluation's weights, checked to be that evaluation's: the file names its step, and one that is
    missing, unreadable or from another step (a folder assembled by hand, a resume from elsewhere) is refused."""
    step = run.progress.best_step
    try:
        with safe_open(run.best_file, "pt") as f:
            saved = (f.metadata() or {}).get("step")
            if saved == str(step):
                return {k: f.get_tensor(k) for k in f.keys()}
        problem = f"it holds the weights of step {saved}" if saved else "it does not say which step it holds"
    except (OSError, SafetensorError) as e:
        problem = "it is missing" if not run.best_file.exists() else f"it could not be read ({e})"
    raise CheckpointError(f"The run keeps the weights of its best evaluation (step {step}), which belong in "
                          f"{run.best_file}, but {problem}. Resume from a checkpoint before step {step} so that "
                          "the evaluation runs again, or start over with --overwrite_output_dir.")


def _thaw(run: _Run, stage: int) -> None:
    on = set(schedules.trainable_at_stage(stage, run.ever_trained, run.layout))
    for name in run.ever_trained:
        run.params[name].requires_grad = name in on
    run.thawed = stage


def _epoch_now(run: _Run) -> float:
    """Epochs trained so far, fractional within an epoch (to 3 places), as logs and history records say it."""
    return round(run.progress.epoch + run.progress.batches_in_epoch / len(run.train_dl), 3)


def _log_loss(run: _Run, bar) -> None:
    """The mean training loss since the last log (over processes too): the one host sync of the steps between."""
    progress = run.progress
    mean_loss = (run.accelerator.reduce(run.window_loss, "mean") / run.window_batches).item()
    run.window_loss.zero_()
    run.window_batches = 0
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"The training loss became {mean_loss} at step {progress.step} (epoch {progress.epoch + 1}). "
            f"Lower --learning_rate (now {run.cfg.learning_rate}), or use fp32 or bf16 instead of fp16. "
            f"The last good checkpoint, if any, is in {run.checkpoints.folder}.")
    lr = run.scheduler.get_last_lr()[0]
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
    epoch = _epoch_now(run)
    progress.losses.append({"step": progress.step, "epoch": epoch, "loss": mean_loss, "learning_rate": lr})
    logger.info("Step %d (epoch %g): training loss %.4f, learning rate %.2e.", progress.step, epoch, mean_loss, lr)
    run.accelerator.log({"train/loss": mean_loss, "train/learning_rate": lr, "train/epoch": epoch},
                        step=progress.step)


def _evaluate(run: _Run, scorer, clock: float) -> None:
    """Score validation, log it, keep the weights if it is the best so far, count patience. The test split is not
    scored here: only once, with the kept weights, after training (finish), so no test figure is seen before the
    choice is made (and the evaluations cost validation's time alone)."""
    accelerator, progress, cfg = run.accelerator, run.progress, run.cfg
    with out_of_memory_explained(lambda why: (
            f"Out of memory evaluating validation {_where(run)} ({why}). Lower --per_device_eval_batch_size (now "
            f"{cfg.per_device_eval_batch_size}). "
            + _go_on(run, f"--per_device_eval_batch_size {max(1, cfg.per_device_eval_batch_size // 4)}"))):
        metrics = {"validation": evaluate(accelerator, run.model, run.eval_dls["validation"], scorer,
                                          "Evaluating (validation)")} if run.eval_dls else {}
    run.model.train()
    progress.seconds = time.perf_counter() - clock
    record = {"epoch": _epoch_now(run), "step": progress.step, "seconds": round(progress.seconds, 2),
              **{f"{s}_{k}": v for s, m in metrics.items() for k, v in scalars(m).items()}}
    progress.history.append(record)
    if not run.eval_dls:  # nothing to choose on: the last weights are the kept ones
        progress.best_epoch, progress.best_step = record["epoch"], progress.step
        return
    watched = cfg.metric_for_best_model
    accelerator.log({f"eval/{k}": v for k, v in record.items() if k not in ("epoch", "step")}, step=progress.step)
    logger.info("Epoch %g, step %d (%.0f s): %s", record["epoch"], progress.step, progress.seconds, ", ".join(
        f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k not in ("seconds", "epoch")))
    best = progress.best["validation"][watched] if progress.best else None
    improved, progress.evals_since_best, stop = keep_or_stop(
        best, metrics["validation"][watched], progress.evals_since_best, cfg.early_stopping_patience)
    if improved:
        progress.best, progress.best_epoch, progress.best_step = metrics, record["epoch"], progress.step
        weights = accelerator.get_state_dict(run.model)  # every process: whole tensors are a collective under FSDP
        if accelerator.is_main_process:  # on disk, not in memory: a second copy of the weights would cost RSS
            run.checkpoints.folder.mkdir(parents=True, exist_ok=True)
            with disk_full_explained(run.checkpoints.folder, "the best weights so far", _make_room(run)), \
                    atomic_write(run.best_file) as tmp:
                save_safetensors({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp,
                                 metadata={"step": str(progress.step)})
    elif stop:
        progress.stopped_early = True
        logger.info("Stopping early at step %d: %d evaluations without a better validation %s "
                    "(best %.4f at step %d).", progress.step, cfg.early_stopping_patience, watched, best,
                    progress.best_step)


def keep_or_stop(best: float | None, value: float, since: int, patience: int | None) -> tuple[bool, int, bool]:
    """The rule each evaluation is judged by: (keep these weights, evaluations since the best, stop now). Only a
    strictly better figure is kept (a tie keeps the earlier weights); patience None or 0 never stops.
    benchmarks/early_stopping.py replays finished runs' histories through it."""
    if best is None or value > best:
        return True, 0, False
    return False, since + 1, bool(patience) and since + 1 >= patience


def _save_checkpoint(run: _Run, clock: float) -> None:
    # A checkpoint is only ever a good one: weights that are no longer finite end the run before any is written.
    progress = run.progress
    progress.seconds = time.perf_counter() - clock  # so a resumed run's time counts the steps before it
    # The unlogged loss window goes into the checkpoint averaged over processes, and every process goes on from
    # that average, resumed or not, so both log the same figures (the mean of the processes' sums is linear).
    run.window_loss = run.accelerator.reduce(run.window_loss, "mean")
    progress.window_loss, progress.window_batches = run.window_loss.item(), run.window_batches
    if not all(torch.isfinite(p).all() for p in run.model.parameters() if p.is_floating_point()):
        raise TrainingDiverged(
            f"The weights became NaN or infinite by step {progress.step} (epoch {progress.epoch + 1}). Lower "
            f"--learning_rate (now {run.cfg.learning_rate}), or use fp32 or bf16 instead of fp16. The last good "
            f"checkpoint, if any, is in {run.checkpoints.folder}.")
    with disk_full_explained(run.checkpoints.folder, f"checkpoint-{progress.step}", _make_room(run)):
        run.checkpoints.save(progress.step, run.model, run.optimizer, run.scheduler,
                             {"config": run.cfg.to_dict(), "world": run.world, "progress": progress.state_dict()})


def _make_room(run: _Run) -> str:
    """How to go on after a write the disk could not hold."""
    last = run.checkpoints.complete()
    go_on = (f"resume with the same command and --resume_from_checkpoint latest ({last[-1].name} and the checkpoints "
             "before it are intact)") if last else "run the same command again"
    return f"Free space (or keep fewer checkpoints: --save_total_limit 1), then {go_on}."


@contextmanager
def cpu_speed_levers(accelerator, model):
    """On CPUs, the two levers measured in benchmarks/RESULTS.md (levers table): 16-bit dropout masks instead of
    torch's float ones (xfer_nlp/dropout.py), and the word embeddings' gradient kept in one buffer
    (reused_embedding_grad). GPUs' own kernels do both well already. This is the one switch for both."""
    if accelerator.device.type != "cpu":
        yield
        return
    with cpu_dropout(accelerator.unwrap_model(model)), reused_embedding_grad(accelerator, model):
        yield


def _where(run: _Run) -> str:
    last = run.checkpoints.complete()
    return (f"at step {run.progress.step} (epoch {_epoch_now(run):g}); "
            + (f"the last checkpoint is {last[-1].name}" if last else "no checkpoint was written yet"))


def _go_on(run: _Run, flags: str) -> str:
    """How to continue with settings a resume may change: from the last checkpoint, or from the start."""
    if run.checkpoints.complete():
        return f"Resume with the same command, --resume_from_checkpoint latest and {flags}."
    return f"Run the same command again with {flags}."


@contextmanager
def _explained_stops(run: _Run):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) and a training step that runs out of memory each become
    one message that says where the run stopped and how to go on."""
    try:
        with out_of_memory_explained(lambda why: _memory_advice(run, why)):
            yield
    except KeyboardInterrupt:
        where = _where(run)
        raise Interrupted(f"Interrupted {where}. Resume with the same command and --resume_from_checkpoint latest.",
                          where) from None


def _memory_advice(run: _Run, why: str) -> str:
    cfg = run.cfg
    levers = ([] if cfg.gradient_checkpointing else [
        "--gradient_checkpointing (each encoder layer recomputed in the backward pass: the same weights, for a "
        "third of the memory of a 512-token fine-tune on a CPU)"]) + [
        f"a smaller --per_device_train_batch_size (now {cfg.per_device_train_batch_size}) with "
        "--gradient_accumulation_steps making up the batch",
        f"a shorter --max_seq_length (now {cfg.max_seq_length})"]
    how = "" if cfg.gradient_checkpointing else " " + _go_on(run, "--gradient_checkpointing")
    return f"Out of memory in a training step {_where(run)} ({why}). To fit, use {'; or '.join(levers)}.{how}"


def _load_whole(accelerator, model, state: dict[str, torch.Tensor]) -> None:
    """Whole tensors (every process holds all of them) into a prepared model. FSDP2 keeps its weights as shards
    (DTensors), which `load_state_dict` cannot fill from whole tensors: torch's `set_model_state_dict` cuts each
    process's shard out of them."""
    module = accelerator.unwrap_model(model)
    if accelerator.is_fsdp2:
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
    else:
        module.load_state_dict(state)


def _restore(load_state_dict, state, what: str) -> None:
    """Load a state a checkpoint held; one that does not fit this run (shapes, groups, keys) is a clear refusal."""
    try:
        load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"The checkpoint's {what} does not fit this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}). Resume from a checkpoint of this run, or start "
                              "over with --overwrite_output_dir.") from None
