"""The Python entry points: `run` trains and exports one model, `predict` labels texts with an exported one."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, patch_environment, set_seed
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from . import allocator, batches, families, hub, logs, loop, modes, pairs, probe, runfolder
from .checkpoint import saved_at
from .config import RunConfig, resolve, unused_settings, with_options
from .data import load_text_data, text_pairs
from .errors import ConfigError, LaunchError, not_cached_offline, weights_cut_short
from .evaluation import (class_names, metrics_markdown, plot_confusion, plot_training, warn_unpredicted,
                         write_predictions)
from .metrics import Scorer, class_weight_vector, scalars
from .modes import MODES
from .precision import bf16_is_native, cpu_hardware, idle_cores_hint, resolve_precision
from .runfolder import RunRecord
from .tables import is_dataframe, with_data

logger = logging.getLogger("xfer_nlp")


@dataclass
class RunResult:
    """What a run produced; `print(result)` shows the metrics table, as does a notebook. `record` is its
    results.json (RunRecord), `results` the same as a dict."""

    output_dir: Path
    record: RunRecord = field(repr=False)

    mode = property(lambda self: self.record.mode)
    metrics = property(lambda self: self.record.metrics)
    train_seconds = property(lambda self: self.record.train_seconds)
    trainable_params = property(lambda self: self.record.trainable_params)
    total_params = property(lambda self: self.record.total_params)
    results = property(lambda self: self.record.to_dict())

    def __str__(self) -> str:
        lines = [f"{self.mode} -> {self.output_dir}", f"{'split':<12}{'accuracy':>10}{'macro_f1':>10}"]
        lines += [f"{split:<12}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}" for split, m in self.metrics.items()]
        lines.append(self._trained())
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:  # Jupyter renders this where the plain repr would show the folder alone
        return f"**{self.mode}** → `{self.output_dir}`\n\n{metrics_markdown(self.metrics)}\n\n{self._trained()}"

    def _trained(self) -> str:
        return f"trained {self.trainable_params:,} of {self.total_params:,} parameters in {self.train_seconds:.1f} s"


def _config_from(config: RunConfig | None, overrides: dict) -> RunConfig:
    return resolve(with_options(config, overrides))


def _hardware(accelerator: Accelerator) -> str:
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{n} x {torch.cuda.get_device_name(accelerator.device)}"
    return cpu_hardware(n)


def _reset_peak_memory() -> None:
    """So each run() in one process (a notebook, a compare grid) reports its own peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak resident set size
    except OSError:
        pass


def _peak_memory_mb(accelerator: Accelerator) -> float:
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    except (OSError, IndexError, ValueError):  # not Linux: the peak of the process's whole life
        import resource

        per_mb = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss counts bytes on macOS, kB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def _check_sharding(accelerator: Accelerator) -> None:
    """A launch config that asks for FSDP where Accelerate did not set it up (it does so only across the GPUs of a
    multi-GPU launch): it would silently run as plain DDP, and FSDP's low-memory loading would leave every process
    but one with empty weights (transformers reads FSDP's flag from the environment). And FSDP 1, whose wrapped
    weights the kept-weights restore and the export do not handle."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
            and accelerator.distributed_type != DistributedType.FSDP:
        where = "" if torch.cuda.is_available() else ", and this machine has no GPU that torch can use"
        raise LaunchError("This launch asks for FSDP (its Accelerate config), but Accelerate set up "
                          f"{accelerator.distributed_type.value} instead: it runs FSDP only across the GPUs of a "
                          f"multi-GPU launch{where}. On CPUs use --config_file recipes/accelerate_configs/cpu_ddp.yaml "
                          "(DDP over gloo).")
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise LaunchError("This launch's FSDP config asks for FSDP version 1 (Accelerate's default where a config names "
                          "none). xfer_nlp keeps, restores and exports sharded weights through FSDP2 alone: set "
                          "`fsdp_version: 2` under fsdp_config, as recipes/accelerate_configs/fsdp.yaml does.")


def _shard_by_block(accelerator: Accelerator, model: torch.nn.Module, lay: families.Layout) -> None:
    """FSDP's transformer-based wrap makes each module of the classes it names a unit of its own, gathered only
    while that block computes. The shipped config names none, so that one config serves every family: the model's
    encoder blocks are named here. Accelerate's own fallback, the model's `_no_split_modules`, fails both ways:
    for BERT, RoBERTa, XLM-R and ModernBERT it names their embeddings module too, and Accelerate 1.16, which also
    shards the word embeddings alone, then stops in fully_shard (`TypeError: Invariant encountered`); for the
    other families it names nothing, and one unit for the whole model gathers every weight at once. A config that
    names a class the model lacks is refused with the class to name, where Accelerate raised a bare ValueError."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is not transformer_auto_wrap_policy:
        return  # no wrap, or by size: the config's own choice
    blocks = families.block_classes(model, lay)
    if plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = blocks
        return
    present = {type(m).__name__ for m in model.modules()}
    if missing := [n for n in plugin.transformer_cls_names_to_wrap if n not in present]:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under LoRA's wrapper
        raise LaunchError(f"This launch's FSDP config wraps {', '.join(missing)} (fsdp_transformer_layer_cls_to_wrap), "
                          f"which this {type(base).__name__} does not have: its encoder blocks are "
                          f"{', '.join(blocks)}. Set `fsdp_transformer_layer_cls_to_wrap: {','.join(blocks)}`, or "
                          "leave the line out and xfer_nlp wraps the encoder blocks of any family "
                          "(recipes/accelerate_configs/fsdp.yaml).")


def _check_one_gpu_each() -> None:
    """A launch of more processes on this machine than it has GPUs (ddp.yaml's `num_processes: 8` on a 2-GPU
    machine): Accelerate deals the processes out over the GPUs round the table, and NCCL refuses two ranks on one
    GPU (`Duplicate GPU detected`) at the first collective, in every process."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if processes < 2 or os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" \
            or not torch.cuda.is_available() or processes <= (gpus := torch.cuda.device_count()):
        return
    raise LaunchError(f"This launch starts {processes} processes on this machine, which has {gpus} GPU(s) that torch "
                      f"can use: one process per GPU. Set num_processes: {gpus} in the Accelerate config (the "
                      f"shipped ddp.yaml and fsdp.yaml say 8), or pass `accelerate launch --num_processes {gpus}`.")


def _refuse_deepspeed() -> None:
    """DeepSpeed's ZeRO stages partition the optimizer state across processes (and, at stage 3, the weights): a
    checkpoint here keeps the main process's optimizer state for all, and the kept-weights restore and the export
    read whole weights, so a resumed or stage-3 run would go wrong. No run has checked it (deepspeed needs GPUs)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise LaunchError("This launch asks for DeepSpeed (its Accelerate config), which xfer_nlp does not run under: "
                          "its checkpoints, exact resume and export do not handle ZeRO's partitioned optimizer state "
                          "and weights. Shard with FSDP2 instead (--config_file recipes/accelerate_configs/fsdp.yaml, "
                          "ZeRO-3's counterpart, which the tests run), or replicate with ddp.yaml.")


def run(config: RunConfig | None = None, *, on_step=None, data=None, **overrides) -> RunResult:
    """Train (or, for mode probe, fit) one classifier and export it to `output_dir`.

    >>> result = xfer_nlp.run(mode="probe", dataset_name="sst2", max_train_samples=1000)
    >>> print(result)

    Keyword arguments are RunConfig fields and override `config`. `data`, instead of dataset_name or the data files,
    is data in memory (tables.ACCEPTED: a DataFrame, a Dataset, {"train": ..., "validation": ...}), saved once under
    the xfer_nlp cache and read from there. `on_step(step)`, if given, is called after each optimizer step
    (profiling, progress callbacks). Works unchanged under `accelerate launch`.
    """
    cfg = _config_from(config, with_data(data, config, overrides))
    _refuse_deepspeed()
    _check_one_gpu_each()
    precision = resolve_precision(cfg.mixed_precision, cfg.mode, cfg.model_name_or_path)  # may refuse the model
    output_dir = Path(cfg.output_dir)
    # Accelerate picks gloo DDP only when told cpu=True; a torchrun-style launch (`accelerate launch --multi_gpu`,
    # `torchrun`) on a machine without CUDA would otherwise run each process alone.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # The folder is checked (and test-written) by the main process alone, then every process moves on together:
    # a compare grid's main process may still be preparing the cell's folder when the others arrive here.
    processes = PartialState(cpu=multi_cpu)
    if processes.is_main_process:
        runfolder.check(output_dir, cfg.overwrite_output_dir, cfg.resume_from_checkpoint)
    processes.wait_for_everyone()
    _reset_peak_memory()
    trackers = cfg.trackers
    # Parameters that thaw mid-run get no gradient while frozen, and some modes never use some (Mode.unused_parameters):
    # DDP must be told to expect that.
    ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] \
        if cfg.gradual_unfreezing or MODES[cfg.mode].unused_parameters else []
    # Accelerate keeps one process-wide state; each run() (a notebook, a compare grid) sets its own precision.
    # PartialState, which holds the process group, is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=multi_cpu, mixed_precision=precision, kwargs_handlers=ddp,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              log_with=trackers or None, project_dir=str(output_dir))
    loop.check_compile(cfg.torch_compile, accelerator.device)  # before the folder is locked or anything loads
    _check_sharding(accelerator)
    with runfolder.Lock(output_dir) if accelerator.is_main_process else nullcontext():
        return _run(cfg, accelerator, output_dir, trackers, on_step)


def _run(cfg: RunConfig, accelerator: Accelerator, output_dir: Path, trackers: list[str], on_step) -> RunResult:
    if cfg.overwrite_output_dir and accelerator.is_main_process:
        runfolder.invalidate(output_dir)  # before the first new file: no old results beside a new model
    accelerator.wait_for_everyone()
    logs.setup("xfer_nlp", output_dir / runfolder.TRAIN_LOG, accelerator.is_main_process)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in os.environ \
            and accelerator.num_processes == 1:
        logger.warning("`accelerate launch --cpu --num_processes N` starts a single process (accelerate issue #2741). "
                       "For N CPU processes with DDP use `accelerate launch --multi_gpu --num_processes N` or "
                       "`--config_file recipes/accelerate_configs/cpu_ddp.yaml` on a machine without GPUs.")
    if hint := idle_cores_hint(accelerator.device.type):
        logger.warning("Threads: %s", hint)
    if unused := unused_settings(cfg):
        logger.warning("Not read by mode %s, so without effect in this run: %s.", cfg.mode, ", ".join(unused))
    set_seed(cfg.seed)
    if cfg.keep_freed_memory:
        if allocator.keep_freed_memory():
            logger.info("Memory: glibc keeps what a step frees for the next one (--keep_freed_memory).")
        else:
            logger.warning("--keep_freed_memory does nothing here: it tunes glibc's allocator, and %s serves malloc "
                           "in this process.", allocator.malloc())
    if hint := allocator.tcmalloc_hint(cfg.mode, cfg.max_seq_length, accelerator.device.type):
        logger.info("Memory: %s", hint)

    extra = {}
    resume = loop.resume_point(accelerator, cfg) if MODES[cfg.mode].loop else None  # a damaged one: before the data
    data = load_text_data(cfg)  # cheap checks and reads: fail before any model is loaded
    scorer = Scorer(len(data.label_names), cfg.metric_list)
    scorer.check_watched(cfg.metric_for_best_model)
    weights = class_weight_vector(cfg.class_weights, data.splits["train"]["label"], len(data.label_names))
    if weights is not None:
        logger.info("Class weights: %s.", ", ".join(f"{n} {w:.3f}" for n, w in zip(data.label_names, weights.tolist())))
    for note in data.notes:
        logger.info("Data: %s.", note)
    # FSDP's low-memory loading gives every process but the first empty weights, which prepare() fills with the
    # first one's. The probe (and LP-FT's, before training) encodes with the model unprepared: there every process
    # reads the weights itself, as under DDP, where the empty ones stopped the run ("Cannot copy out of meta tensor").
    spec = MODES[cfg.mode]
    unprepared = not spec.loop or cfg.head_init == "probe"
    with patch_environment(fsdp_cpu_ram_efficient_loading="false") \
            if unprepared and accelerator.distributed_type == DistributedType.FSDP else nullcontext():
        built = modes.build(cfg, data.label_names)
    _shard_by_block(accelerator, built.model, built.layout)
    reading, extra["reading"] = batches.choose_reading(cfg, data.splits["train"]["text"], built.tokenizer,
                                                       text_pairs(data.splits["train"]))
    logger.info("Reading texts: %s (the training %s' 90th-percentile length is %d tokens%s).", reading.describe(),
                "pairs" if reading.pairs else "texts", extra["reading"]["train_p90_tokens"],
                "; --truncation auto" if cfg.truncation == "auto" and not reading.pairs else "")
    if extra["reading"]["train_p90_tokens"] > cfg.max_seq_length < 512 and not (reading.chunk_stride or reading.pairs):
        logger.warning("The training texts are long and the model reads %d tokens of each. On whole reviews "
                       "(polarity2k) the probe scored 0.71 at 128 tokens, 0.795 with --max_seq_length 512 (head+tail) "
                       "and 0.80 with --long_text chunk (benchmarks/RESULTS.md, \"Long reviews\"); each costs 4-5x "
                       "the time a step. Pass one of them if that time is worth it.", cfg.max_seq_length)
    with accelerator.main_process_first():
        tokenized = batches.tokenize(data.splits, built.tokenizer, reading)
    collator = batches.make_collator(built.tokenizer, accelerator.mixed_precision, accelerator.device.type)
    # Under --torch_compile the training batches come in a few padded lengths: one CUDA graph each.
    train_collator = batches.BucketCollator(built.tokenizer, reading.max_length) if cfg.torch_compile != "no" \
        else collator
    trainable, total = modes.count_parameters(built.model)
    logger.info("Mode %s on %s (%s pooling): %s of %s parameters train; %s.", cfg.mode, cfg.model_name_or_path,
                built.pooling, f"{trainable:,}", f"{total:,}",
                ", ".join(f"{s} {len(d)}" for s, d in data.splits.items()))
    shown = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    if cfg.torch_compile != "no":
        logger.info("Training step: torch.compile (%s) into CUDA graphs, batches padded to a few lengths; expect "
                    "the first steps to stall while it compiles.", cfg.torch_compile)
    logger.info("Precision %s%s on %s.", shown, " (chosen by --mixed_precision auto)" if cfg.mixed_precision == "auto"
                else "", _hardware(accelerator))
    if trackers:
        # Named, so that a grid's cells (and runs of one project) tell apart in the dashboard; a resumed run is a
        # new tracker run of the same name, from the checkpoint's step. tensorboard reads the killed run's events
        # and the resumed run's as one: purge_step hides the killed run's from the first step trained again on.
        name = cfg.run_name or output_dir.resolve().name
        accelerator.init_trackers(runfolder.TRACKER_PROJECT, config={k: v for k, v in cfg.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool))},
                                  init_kwargs={"wandb": {"name": name}, "trackio": {"name": name},
                                               "tensorboard": {"purge_step": saved_at(resume) + 1} if resume else {}})

    start = time.perf_counter()
    eval_splits = [s for s in tokenized if s != "train"]
    model = built.model

    def make_loader(dataset):
        return accelerator.prepare(batches.eval_loader(dataset, collator, cfg.per_device_eval_batch_size))

    if spec.loop == "pairs":  # SetFit's first stage: tune the encoder on pairs, keeping the last weights
        labels = tokenized["train"]["labels"]
        rounds = cfg.pair_iterations or pairs.auto_rounds(labels)
        pair_ds = pairs.pair_dataset(tokenized["train"], pairs.make_pairs(labels, rounds, cfg.seed, data.label_names))
        rule = "--pair_iterations" if cfg.pair_iterations else pairs.AUTO_RULE
        extra["pairs"] = {"rounds": rounds, "pairs": len(pair_ds), "rule": rule}
        logger.info("Contrastive pairs: %d (%d rounds x 2 per training text; %s).", len(pair_ds), rounds, rule)
        # Random batches, as setfit draws them: grouping pairs by length saved 10-65% of the seconds but cost up to
        # 2 points of accuracy (mr, n=100; benchmarks/RESULTS.md, "Random pair batches").
        pair_dl = batches.train_loader(pair_ds, pairs.PairCollator(collator), cfg.per_device_train_batch_size,
                                       cfg.seed, lengths=pairs.pair_lengths(pair_ds), group=1)
        trained = loop.train(accelerator, cfg, model, built.layout, pair_dl, {}, scorer, loss_fn=pairs.cosine_loss,
                             on_step=on_step, resume=resume)
        extra.update(history=trained.history, losses=trained.losses, schedule=trained.schedule,
                     resumed=trained.resumed)
        model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    elif spec.loop == "classifier":
        if cfg.head_init == "probe":  # LP-FT: the probe's head first (always encoded afresh: timed with the run)
            model = model.to(accelerator.device)
            probed, _, extra["head_init"] = probe.run_probe(
                accelerator, dataclasses.replace(cfg, no_feature_cache=True), model, built.layout, make_loader,
                {s: tokenized[s] for s in ("train", "validation")}, scorer, weights)
            extra["head_init"]["validation"] = probed["validation"]["accuracy"]
            logger.info("Head initialised by the probe (--head_init probe): validation accuracy %.4f before any "
                        "step.", probed["validation"]["accuracy"])
        train_dl = batches.train_loader(tokenized["train"], train_collator, cfg.per_device_train_batch_size, cfg.seed)
        eval_dls = {s: batches.eval_loader(tokenized[s], collator, cfg.per_device_eval_batch_size) for s in eval_splits}
        trained = loop.train(accelerator, cfg, model, built.layout, train_dl, eval_dls, scorer, weights,
                             on_step=on_step, resume=resume)
        extra.update(history=trained.history, losses=trained.losses, schedule=trained.schedule,
                     best_epoch=trained.best_epoch,
                     best_step=trained.best_step, stopped_early=trained.stopped_early, resumed=trained.resumed,
                     test_seconds=trained.test_seconds)
        metrics, outputs = trained.metrics, trained.outputs
        model = accelerator.unwrap_model(model)
    if isinstance(model, FSDPModule):  # FSDP2's shards, whole again in every process: contrastive's head is fitted on
        # features that all of them encode, and each exports (or merges LoRA into) a plain model of the run's class
        model = modes.unsharded(model, get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))
    if spec.fitted_head:
        model = model.to(accelerator.device)
        # After a loop (contrastive's pairs) the head is fitted on the tuned encoder in fp32 and with no feature
        # cache: its weights are this run's own.
        tuned = spec.loop is not None
        metrics, outputs, extra["probe"] = probe.run_probe(
            accelerator, dataclasses.replace(cfg, no_feature_cache=True) if tuned else cfg, model, built.layout,
            make_loader, tokenized, scorer, weights, autocast=not tuned)
        extra["test_seconds"] = extra["probe"]["test_seconds"]
    # A resumed run's time is this process's plus what the checkpoint's steps took in the processes before it (the
    # steps an interrupted process ran after its last checkpoint are redone here, so counted once). Scoring the test
    # split is reporting, not training, and is left out (test_seconds), as a peer's timing leaves out its evaluation.
    train_seconds = (time.perf_counter() - start + (extra.get("resumed") or {}).get("seconds_before", 0)
                     - extra.get("test_seconds", 0.0))

    # The figures results.json reports (the kept weights, in fp32; the test split's only scoring) reach the trackers
    # too, at the last step a loop logged (wandb drops a step lower than one it has seen).
    accelerator.log({f"final/{s}_{k}": v for s, m in metrics.items() for k, v in scalars(m).items()},
                    step=max((r["step"] for r in extra.get("history", []) + extra.get("losses", [])), default=0))
    if accelerator.is_main_process:
        warn_unpredicted(metrics, data.label_names, cfg.metric_for_best_model)
    if cfg.save_lora_adapter and hasattr(model, "peft_config") and accelerator.is_main_process:
        model.save_pretrained(output_dir / "adapter")  # before merging: merge_and_unload consumes the adapters
        runfolder.as_open_makes(*(output_dir / "adapter").glob("*.safetensors"))
    exported = modes.export_model(model).to("cpu")
    record = RunRecord(
        mode=cfg.mode, model=cfg.model_name_or_path, dataset=cfg.train_file or cfg.dataset_name,
        train_samples=len(data.splits["train"]), split_sizes={s: len(d) for s, d in data.splits.items()},
        metrics=metrics, train_seconds=round(train_seconds, 2), trainable_params=trainable, total_params=total,
        peak_memory_mb=round(_peak_memory_mb(accelerator), 1), label_names=list(data.label_names),
        hardware=_hardware(accelerator), finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=cfg.to_dict(), pooling=built.pooling, normalize=bool(getattr(exported.config, "normalize", False)),
        architecture=type(exported).__name__, transformers_min=built.layout.family.transformers,
        data_source=data.source,
        data_notes=list(data.notes), num_processes=accelerator.num_processes,
        distributed_type=accelerator.distributed_type.value,
        mixed_precision=accelerator.mixed_precision, torch=torch.__version__, malloc=allocator.malloc(),
        **extra)
    if accelerator.is_main_process:
        size = sum(t.numel() * t.element_size() for t in exported.state_dict().values()) / 2**20
        with runfolder.disk_full_explained(output_dir, f"the exported model ({size:,.0f} MB) and the run's results",
                                           _make_room(cfg)):
            write_predictions(output_dir / runfolder.PREDICTIONS, data.splits, outputs, data.label_names)
            plot_confusion(output_dir / runfolder.CONFUSION, metrics, data.label_names)
            plot_training(output_dir / runfolder.CURVES, record)
            hub.save_outputs(output_dir, exported, built.tokenizer, record)
        logger.info("Saved the model, results.json and model card to %s.", output_dir)
    accelerator.wait_for_everyone()
    # Not end_training(): it also destroys the process group, which the next run() of a compare grid needs.
    for tracker in accelerator.trackers:
        tracker.finish()
    if cfg.push_to_hub and accelerator.is_main_process:
        url = hub.push(output_dir, cfg.hub_model_id, cfg.hub_private_repo, cfg.hub_token)
        logger.info("Pushed to %s.", url)
    return RunResult(output_dir, runfolder.read_results(output_dir) if accelerator.is_main_process else record)


def _make_room(cfg: RunConfig) -> str:
    """How to go on when the disk cannot hold a finished run's outputs: the checkpoints hold the training."""
    if runfolder.state(Path(cfg.output_dir)) == "interrupted":
        return ("Free space, then resume with the same command and --resume_from_checkpoint latest: the last "
                "checkpoint holds the trained weights, so only the scoring and the export run again.")
    return "Free space, then run the same command again with --overwrite_output_dir."


PREDICT_PRECISIONS = ("fp32", "bf16", "auto")


PREDICT_BACKENDS = ("torch", "onnx")
# Texts labelled at a time by predict_stream: each chunk is sorted by length and batched, so memory stays flat for
# any number of texts while batches stay nearly unpadded.
CHUNK_TEXTS = 16384
# Padded tokens per forward pass in predict (32 texts of 128 tokens, 8 of 512), at most batch_size (64) texts.
# Measured on 2 CPU cores (benchmarks/RESULTS.md, "Inference", token budget): as fast as 64-text batches on
# sentences, where the 64 binds, and on 512-token reviews half the peak memory in bf16 and a third less in fp32;
# wider batches of sentences (8,192 tokens and up) ran slower and peaked higher.
BATCH_TOKENS = 4096
# Up to this many texts, predict keeps a chunk's token ids in Python lists rather than an Arrow table: for one
# sentence the table cost more than the model (11 ms a call against 5). datasets.map holds as many texts' ids in
# lists at once (its batch of 1,000), so the peak is no higher; larger chunks keep the compact table.
ROWS_IN_LISTS = 1000


class Predictor:
    """An exported model loaded once, to label texts as often as needed: `Predictor(MODEL)(texts)`.

    predict() and predict_stream() build one for each call, so each call pays for loading the model (about 60 ms
    for the embedded encoder's export on 2 CPU cores); a notebook or a server that labels texts again and again
    builds one Predictor and calls it (benchmarks/RESULTS.md, "Inference": one sentence in 73 ms through predict(),
    6 ms through a Predictor, 5 ms through a pipeline()).

    precision: fp32 (the default) computes exactly what the run reported and what pipeline() computes; bf16
    autocasts the matrix multiplies (faster where the CPU or GPU has native bf16, see benchmarks/RESULTS.md
    "Inference"; scores then differ in the third decimal and a near-tie label can flip); auto is bf16 where the
    hardware computes it natively, else fp32.

    Texts are batched by a token budget: each forward pass holds as many texts as fit in `batch_tokens` padded
    tokens, and at most `batch_size` (None: no cap), so sentences go 64 to a batch and 512-token reviews 8.

    A run's export is read as the run read its texts (results.json's "reading": truncation or windows,
    max_seq_length); any other model as pipeline() reads it (the first tokens, up to the model's limit). Texts are
    batched longest first and put back in input order.

    Text pairs (a model trained with --text_pair_column) are given as (text, text_pair) tuples or, as pipeline()
    takes them, {"text": ..., "text_pair": ...} dicts; their rows carry text_pair too. A run trained on pairs is
    refused single texts, and one trained on single texts pairs. The model loads with trust_remote_code off: an
    xfer_nlp export's pooled head is this package's own class, and no code from a model folder or the Hub ever runs.

    backend "onnx" computes the logits with onnxruntime from MODEL/onnx/model.onnx (`xfer-nlp export MODEL --format
    onnx`), fp32 only; tokenising, reading, batching and the returned rows are the same as torch's.
    """

    def __init__(self, model: str | Path, precision: str = "fp32", backend: str = "torch",
                 batch_size: int | None = 64, batch_tokens: int = BATCH_TOKENS):
        if precision not in PREDICT_PRECISIONS:
            raise ConfigError(f"precision '{precision}' is not one of {', '.join(PREDICT_PRECISIONS)}.")
        if backend not in PREDICT_BACKENDS:
            raise ConfigError(f"backend '{backend}' is not one of {', '.join(PREDICT_BACKENDS)}.")
        for name, value in (("batch_tokens", batch_tokens), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}.")
        if backend == "onnx" and precision == "bf16":
            raise ConfigError("The ONNX backend runs the exported fp32 graph: use precision fp32 (or auto) with it.")
        self.backend, self.batch_size, self.batch_tokens = backend, batch_size, batch_tokens
        model = os.path.expanduser(model)  # ~/runs/x from Python; a Hub id is left as it is
        # The ONNX graph carries the weights: from the model folder it needs only the config and the tokenizer.
        if backend == "onnx":
            from .onnx_export import OnnxClassifier, default_output

            self.tokenizer, config, self.reading = load_setup(model)
            self.onnx_model, self.device = OnnxClassifier.load(default_output(model)), "cpu"
            precision = "fp32"
        else:
            self.tokenizer, self.classifier, self.reading = load_model(model)
            config, self.device = self.classifier.config, self.classifier.device.type
            refusal = families.autocast_refusal(config, model, "bf16")
            if precision == "auto":
                precision = "bf16" if bf16_is_native(self.device) and not refusal else "fp32"
            elif precision == "bf16" and refusal:
                raise ConfigError(refusal)
        self.precision = precision
        # A run's export says whether it reads pairs; another model reads whichever it is given.
        self.pairs = self.reading.pairs if runfolder.recorded(Path(model), "reading") else None
        self.collator = batches.make_collator(self.tokenizer, None, self.device)
        self.labels = class_names(config, model)

    def __call__(self, texts: str | dict | list) -> list[dict]:
        """[{"text", "label", "score", "scores": {label: p}}] for one text (or pair) or a list of them, in input
        order."""
        _not_a_table(texts)
        try:
            texts = [texts] if isinstance(texts, (str, dict)) else list(texts)
        except TypeError:
            raise ConfigError(f"texts must be a string or a list of strings (or of text pairs), not "
                              f"{type(texts).__name__} ({texts!r:.60}).") from None
        if not texts:  # as pipeline([]) answers
            return []
        self._split(texts, 0, of=len(texts))  # every item checked before any is labelled
        return list(self.stream(texts, total=len(texts)))

    def _split(self, chunk: list, position: int, of: int | None = None) -> tuple[list[str], list[str] | None]:
        """A chunk of inputs (from `position` in the input, of `of` when known) as (texts, pairs): pairs None for
        single texts. Refuses what is neither, a mix, and a run's export given the other kind."""
        def pair(item):
            if isinstance(item, dict) and set(item) == {"text", "text_pair"}:
                item = (item["text"], item["text_pair"])
            ok = isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item)
            return tuple(item) if ok else None

        given = [item if isinstance(item, str) else pair(item) for item in chunk]
        bad = next((i for i, g in enumerate(given) if g is None), None)
        if bad is not None:
            where = f"of {of} (counting from 0)" if of else f"(counting from 0: row {position + bad + 1} of a file)"
            raise ConfigError(f"Text {position + bad} {where} is {chunk[bad]!r:.100}, not a string or a pair of "
                              "strings: a missing value, or a row without the text column. Pass strings, or (text, "
                              "text_pair) pairs, only (drop or fill the missing ones).")
        paired = [isinstance(g, tuple) for g in given]
        if any(paired) and not all(paired):
            i = paired.index(not paired[0])
            raise ConfigError(f"Text {position + i} is {'a pair' if paired[i] else 'a single text'} among "
                              f"{'single texts' if paired[i] else 'pairs'}: label one kind at a time.")
        if self.pairs is not None and self.pairs != paired[0]:
            raise ConfigError("This model was trained on text pairs (--text_pair_column): give each text with its "
                              "pair, as (text, text_pair) or {'text': ..., 'text_pair': ...} (the command line: "
                              "--input FILE --text_pair_column NAME)." if self.pairs else
                              "This model was trained on single texts, not pairs: give texts.")
        if not paired[0]:
            return given, None
        return [a for a, _ in given], [b for _, b in given]

    def stream(self, texts, total: int | None = None, chunk_texts: int = CHUNK_TEXTS):
        """The rows of any iterable of texts, in input order, as each chunk of `chunk_texts` is labelled: a file of
        a million texts streams through in flat memory. `total`, when known, sizes the progress bar."""
        import itertools

        from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
        from tqdm.auto import tqdm

        _not_a_table(texts)
        stream, position = iter(texts), 0
        bars_on = is_progress_bar_enabled()
        disable_progress_bar()  # datasets' per-chunk "Tokenising" bars; one bar below counts the texts
        try:
            few = total is not None and total <= 64  # no bar for a few texts
            with tqdm(total=total, unit=" texts", desc="Predicting", disable=few, leave=False) as bar:
                while chunk := list(itertools.islice(stream, chunk_texts)):
                    texts, pairs = self._split(chunk, position)
                    for i, p in enumerate(torch.softmax(self._logits(texts, pairs), -1).tolist()):
                        best = max(range(len(p)), key=p.__getitem__)
                        yield {"text": texts[i], **({"text_pair": pairs[i]} if pairs else {}),
                               "label": self.labels[best], "score": p[best], "scores": dict(zip(self.labels, p))}
                    position += len(chunk)
                    bar.update(len(chunk))
        finally:
            if bars_on:
                enable_progress_bar()

    def _logits(self, chunk: list[str], pairs: list[str] | None) -> torch.Tensor:
        from datasets import Dataset, DatasetDict

        reading = dataclasses.replace(self.reading, pairs=pairs is not None)  # another model reads either kind
        if len(chunk) <= ROWS_IN_LISTS:
            tokenized = batches.tokenize_rows(chunk, self.tokenizer, reading, pairs=pairs)
        else:
            columns = {"text": chunk, **({"text_pair": pairs} if pairs else {}), "label": [0] * len(chunk)}
            data = DatasetDict(predict=Dataset.from_dict(columns))
            # A chunk lives in memory and is tokenised once, so its fingerprint is only a unique name.
            tokenized = batches.tokenize(data, self.tokenizer, reading, fingerprint=uuid.uuid4().hex)["predict"]
        loader = batches.budget_loader(tokenized, self.collator, self.batch_tokens, self.batch_size)
        if self.backend == "onnx":
            return batches.per_text(None, loader, self.onnx_model)[0]
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return loop.predict_logits(None, self.classifier, loader)[0]


def _not_a_table(texts) -> None:
    """A table given as the texts is refused: a DataFrame iterates over its column names, which were labelled as
    if they were the texts, and a Dataset over its rows as dicts."""
    split = ""
    if is_dataframe(texts):
        columns = list(texts.columns)
    elif type(texts).__module__.split(".")[0] == "datasets":
        columns = texts.column_names or []
        if isinstance(columns, dict):  # a DatasetDict's, by split
            split, columns = next(iter(columns.items()), ("", []))
            split = f"[{split!r}]"
    else:
        return
    shown = [str(c) for c in columns] or ["text"]
    raise ConfigError(f"texts is a {type(texts).__name__} (a table with columns {', '.join(shown[:6])}), not texts: "
                      f"pass the column that holds them, e.g. table{split}[{shown[0]!r}] (for pairs, a list of "
                      "(text, text_pair)).")


def predict(model: str | Path, texts: str | list[str], batch_size: int | None = 64, precision: str = "fp32",
            backend: str = "torch", batch_tokens: int = BATCH_TOKENS) -> list[dict]:
    """Label texts with an exported model: [{"text", "label", "score", "scores": {label: p}}] in input order.

    One call loads the model and labels `texts` (one text or a list); the options are Predictor's. To label texts
    again and again, build a Predictor once and call it. For more texts than fit in memory, use predict_stream.
    """
    return Predictor(model, precision, backend, batch_size, batch_tokens)(texts)


def predict_stream(model: str | Path, texts, batch_size: int | None = 64, precision: str = "fp32",
                   backend: str = "torch", total: int | None = None, chunk_texts: int = CHUNK_TEXTS,
                   batch_tokens: int = BATCH_TOKENS):
    """predict() over any iterable of texts, yielding rows in input order as each chunk of `chunk_texts` is
    labelled: a file of a million texts streams through in flat memory (`xfer-nlp predict --input F --output O`).
    `total`, when known, sizes the progress bar. The model loads (and bad options are refused) when it is called."""
    return Predictor(model, precision, backend, batch_size, batch_tokens).stream(texts, total, chunk_texts)


def load_model(model: str):
    """(tokenizer, classifier in eval mode, Reading) for a run folder, a model folder or a Hub id."""
    from transformers import AutoModelForSequenceClassification

    tokenizer, _, reading = load_setup(model)
    try:
        classifier = AutoModelForSequenceClassification.from_pretrained(model, trust_remote_code=False, use_kernels=False)
    except SafetensorError as e:
        raise weights_cut_short(model, e) from None
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model, e) from None
    return tokenizer, classifier.to("cuda" if torch.cuda.is_available() else "cpu").eval(), reading


def load_setup(model: str):
    """(tokenizer, classifier's config, Reading) for a model, reading nothing from its weights file: what the
    ONNX backend needs beside its graph, and what load_model builds on."""
    from transformers import AutoConfig, AutoTokenizer

    check_model_folder(model)
    path = Path(model).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model, e) from None
    reading = batches.saved_reading(runfolder.recorded(path, "reading"))
    if reading is None:  # as pipeline() reads: the tokenizer's limit, within what the positions cover
        limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 512
        positions = families.position_limit(config)  # RoBERTa's 514 positions read 512 tokens
        reading = batches.Reading(min(limit, positions) if positions else limit)
    return tokenizer, config, reading


def _unloadable(model: str, e: Exception) -> ConfigError:
    return ConfigError(f"Could not load the model '{model}' ({type(e).__name__}: {str(e).splitlines()[0][:300]})."
                       f"{not_cached_offline(model, e)}")


def check_model_folder(model: str) -> None:
    """A model argument that cannot be a model is one message before anything loads."""
    path = Path(model).expanduser()
    # os.path, not Path: a text given as the model by mistake may be too long to be a path, and Path.stat() raises
    if os.path.isdir(path) and not (path / "config.json").is_file():
        if said := runfolder.unfinished(path, "--model "):
            raise ConfigError(said)
        raise ConfigError(f"--model '{model}' is a folder but not a model (it has no config.json). Pass the "
                          "output_dir of a finished `xfer-nlp run`, or a text-classification model folder or Hub id.")
    a_path = model.startswith((".", "/", "~")) or model.count("/") > 1  # /x, ./x, ~/x, a/b/c: not a Hub id
    if not os.path.exists(path) and (a_path or model.count("/") != 1):
        shown = model if len(model) <= 100 else model[:100] + "..."  # a text pasted here is not shown whole
        if a_path:
            raise ConfigError(f"--model '{shown}' does not exist. Check the path, or give a Hub id (user/name).")
        raise ConfigError(f"--model '{shown}' is neither a folder nor a Hub id (user/name).")
