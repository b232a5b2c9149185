"""The run configuration: one typed dataclass, YAML + command-line merge and validation.

Each mode's defaults, descriptions and rules live in its registry entry (modes.MODES); this module applies them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

import yaml
from accelerate import utils as accelerate_utils
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .errors import ConfigError
from .modes import ENCODER_FLAGS, EMBEDDED_MODEL, MAX_EPOCHS, MIN_STEPS, MODES, modes_with

POOLINGS = ("mean", "cls", "pooler")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "stlr")
REPORT_TO = ("none", "all", "tensorboard", "wandb", "trackio")
TRACKER_AVAILABLE = {"tensorboard": accelerate_utils.is_tensorboard_available, "wandb": accelerate_utils.is_wandb_available,
                     "trackio": accelerate_utils.is_trackio_available}
TRUNCATIONS = ("auto", "head", "tail", "head+tail")
LONG_TEXT = ("truncate", "chunk")
HEAD_INITS = ("random", "probe", "keep")
TORCH_COMPILE = ("no", "cudagraphs", "reduce-overhead")
BEST_METRICS = ("accuracy", "macro_f1")  # what the shipped metrics module computes per split

def _per_mode(key: str) -> str:
    """'finetune 3, scratch 8, ...': a default as each mode with a training loop sets it, for --help."""
    def shown(v):
        return f"{v:.0e}".replace("e-0", "e-") if isinstance(v, float) and v < 0.01 else f"{v:g}"
    unused = " and ".join(name for name, mode in MODES.items() if not mode.loop)
    return ", ".join(f"{name} {shown(mode.defaults[key])}" for name, mode in MODES.items() if mode.loop) + \
        f"; unused by {unused}"


# Field metadata that is this package's own (the rules above), not an argparse keyword.
RULE_KEYS = ("resume_may_differ", "grid_owned", "positive", "only_for")


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser, which hands a field's whole metadata to add_argument, minus RULE_KEYS."""

    @staticmethod
    def _parse_dataclass_field(parser, field):
        plain = copy.copy(field)
        plain.metadata = MappingProxyType({k: v for k, v in field.metadata.items() if k not in RULE_KEYS})
        HfArgumentParser._parse_dataclass_field(parser, plain)


def _items(text: str) -> list[str]:
    """A comma-separated option as its stripped, non-empty items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _modes_where(attribute: str, value) -> str:
    return ", ".join(name for name, mode in MODES.items() if getattr(mode, attribute) == value)


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run. Field help is the `--help` text."""

    mode: str = _f("finetune", "Transfer mode: " + ", ".join(map(str, MODES.values())) + ".", choices=tuple(MODES),
                   grid_owned=True)
    model_name_or_path: str = _f(EMBEDDED_MODEL, f"Encoder: '{EMBEDDED_MODEL}' (the embedded pretrained MiniLM-L6, "
                                 "offline), a local transformers folder, or a Hub id. Loaded with from_pretrained, "
                                 "safetensors only, never trust_remote_code. A classifier (an earlier run's "
                                 "output_dir, a fine-tuned Hub model) works too: its encoder is the start and its "
                                 "head is replaced by one for this data's labels (intermediate-task transfer), or "
                                 "kept with --head_init keep when its labels are this data's.")
    dataset_name: str = _f("sst2", "A registry name (sst2, sst5, mr, subj, trec, polarity2k), any Hub dataset id (user/name, "
                           "through datasets.load_dataset; cached copies work offline), a folder with "
                           "train/validation/test files or laid out as a Hub dataset repository, or one file "
                           "(.jsonl, .json, .csv, .tsv, .parquet; the text ones also as .gz, .bz2 or .xz).")
    dataset_config_name: Optional[str] = _f(None, "The configuration of a Hub dataset (datasets.load_dataset's "
                                            "second argument), e.g. 'sst2' for nyu-mll/glue.")
    train_file: Optional[str] = _f(None, "A training data file (as run_glue spells it); replaces --dataset_name.")
    validation_file: Optional[str] = _f(None, "With --train_file: the validation file (default: a held-out part "
                                        "of train).")
    test_file: Optional[str] = _f(None, "With --train_file: a test file, scored once with the chosen model.")
    data_dir: Optional[str] = _f(None, "Folder that holds the registry sets (default: $XFER_NLP_DATA_DIR, else "
                                 "../shared/data next to the working directory or the project).",
                                 resume_may_differ=True)
    text_column: str = _f("text", "Column that holds the text.")
    text_pair_column: Optional[str] = _f(None, "For sentence-pair tasks (entailment, paraphrase: glue's mrpc reads "
                                         "sentence1 and sentence2): the column of each example's second text. The "
                                         "model reads the two as one input, as the tokenizer pairs them ([CLS] text "
                                         "[SEP] pair [SEP]), and a pair over --max_seq_length loses tokens from the "
                                         "end of its longer text, as pipeline() cuts a pair.")
    label_column: str = _f("label", "Column that holds the label (integer ids or strings; strings are mapped to ids "
                           "in sorted order).")
    output_dir: Optional[str] = _f(None, "Where results.json, the exported model, logs and checkpoints go "
                                   "(default: runs/<dataset>-<mode>). For compare: the grid's folder (default: "
                                   "runs/<dataset>-compare), each cell a run in OUTPUT_DIR/runs/.", grid_owned=True)
    overwrite_output_dir: bool = _f(False, "Allow writing into an output_dir that already holds a run or other files; "
                                    "the earlier run's results.json and checkpoints are removed first, other files "
                                    "are left unless the run writes one of the same name.",
                                    resume_may_differ=True, grid_owned=True)
    max_train_samples: Optional[int] = _f(None, "Use a seeded, stratified subset of this many training examples (at "
                                          "least two of each class where the size allows).",
                                          grid_owned=True, positive="integer")
    validation_split_ratio: float = _f(0.1, "Fraction of train held out (seeded, stratified) when the data has no "
                                       "validation split.")
    cv_folds: Optional[int] = _f(None, "Cross-validation, for data without a test split (mr, subj, one labelled "
                                 "file): cut its labelled rows into this many stratified folds (one fixed partition "
                                 "for every mode, size and seed) and score fold --cv_fold as the test split, "
                                 "training and validating on the others. mr's and subj's published figures are "
                                 "10-fold means (SentEval's protocol); compare --folds runs every fold.",
                                 positive="integer", grid_owned=True)
    cv_fold: int = _f(0, "With --cv_folds N: which fold, 0 to N-1, is the test split.", grid_owned=True)
    max_seq_length: int = _f(128, "Tokens the model reads per text (or per window with --long_text chunk), special "
                             "tokens included; at most the encoder's position limit. A count of longer texts is logged.",
                             positive="integer")
    truncation: str = _f("auto", "Which tokens of a longer text are kept: head (the first, what pipeline() does), tail "
                         "(the last), head+tail (the first --head_tokens and the last; Sun et al. 2019), or auto: "
                         "head+tail when the training texts' 90th-percentile length exceeds --max_seq_length, else "
                         "head (the choice and the length are logged).", choices=TRUNCATIONS)
    head_tokens: Optional[int] = _f(None, "head+tail: how many of the first tokens to keep (default a quarter of "
                                    "--max_seq_length, as Sun et al.'s 128 of 510); the rest come from the end.")
    long_text: str = _f("truncate", "truncate (see --truncation), or chunk: read a long text as overlapping windows "
                        "of --max_seq_length tokens and average their logits (the probe: their features). "
                        "xfer_nlp.predict applies it; plain pipeline() truncates.", choices=LONG_TEXT)
    chunk_stride: Optional[int] = _f(None, "chunk: a window starts every this many tokens (default half a window, "
                                     "so each token is read twice); at most the window's text tokens.")
    num_train_epochs: Optional[float] = _f(None, f"Training epochs (default per mode: {_per_mode('num_train_epochs')}; "
                                           "contrastive's are passes over its pairs).", positive="number")
    learning_rate: Optional[float] = _f(None, f"Peak AdamW learning rate (default per mode: {_per_mode('learning_rate')}).",
                                        positive="number")
    max_steps: Optional[int] = _f(None, "Train exactly this many optimizer steps (overrides --num_train_epochs and "
                                  "--min_train_steps).", positive="integer")
    min_train_steps: Optional[int] = _f(None, "Small data: raise the epochs until training runs at least this many "
                                        f"optimizer steps, at most {MAX_EPOCHS} epochs (default {MIN_STEPS} for the "
                                        "trained modes when --num_train_epochs is not given, else 0 = off). The "
                                        "rule applied is logged at the start.")
    eval_steps: Optional[int] = _f(None, "Evaluate (and keep the best weights) every this many optimizer steps and at "
                                   "the last one, instead of at each epoch end. Default: each epoch end, or a tenth "
                                   "of the run when it lasts more than 10 epochs.", positive="integer")
    early_stopping_patience: Optional[int] = _f(None, "Stop after this many evaluations in a row without a better "
                                                "validation accuracy (default: never stop early).",
                                                positive="integer")
    metric_for_best_model: str = _f("accuracy", "Validation metric that chooses the kept epoch (and the probe's C) "
                                    "and that early stopping watches, the larger the better: accuracy, macro_f1 "
                                    "(for imbalanced data), or a figure a --metrics module returns.")
    metrics: str = _f("", "Extra evaluate modules scored on every evaluation, comma-separated: Hub names (e.g. "
                      "matthews_correlation; online or cached) or paths of module files. A module is Python code "
                      "that runs in this process, as trust_remote_code would: name only ones you trust. accuracy, "
                      "macro_f1, per-class figures and the confusion matrix are always computed, offline.")
    class_weights: str = _f("none", "Cross-entropy class weights (for probe, the logistic head's): none, balanced "
                            "(n / (classes x count), as scikit-learn), or one comma-separated weight per class.")
    max_grad_norm: float = _f(1.0, "Clip the gradient's global norm to this (as transformers' Trainer); 0 = off.")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and LayerNorm weights).")
    warmup_ratio: Optional[float] = _f(None, "Fraction of steps for linear warm-up (default per mode).")
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule after warm-up: linear, cosine, constant_with_warmup "
                                "(transformers' get_scheduler), or stlr (ULMFiT's slanted triangular rate; "
                                "--warmup_ratio is then its cut_frac).", choices=SCHEDULERS)
    stlr_ratio: float = _f(32.0, "stlr: how much smaller the lowest learning rate is than the peak (ULMFiT: 32).")
    layer_lr_decay: float = _f(1.0, "finetune/lora: the head trains at --learning_rate, the top encoder layer at "
                               "lr*decay, the next at lr*decay^2, ..., the embeddings lowest (1.0 = off; ELECTRA "
                               "uses 0.8, ULMFiT 1/2.6). Raise --learning_rate with it: at 0.8 on all of sst2 it "
                               "cost 1.3 points at finetune's 5e-5 and was level with plain fine-tuning at 1e-4.")
    gradual_unfreezing: bool = _f(False, "finetune/lora: train the head alone first, then unfreeze one encoder layer "
                                  "from the top every --unfreeze_interval epochs, embeddings last (ULMFiT).")
    unfreeze_interval: float = _f(1.0, "gradual_unfreezing: epochs per stage (fractions allowed, e.g. 0.25). A layer "
                                  "trains only from its stage on: on all of sst2 (3 epochs, layer_lr_decay 0.8, stlr, "
                                  "1e-4) 0.25 cost 1.4 points against plain fine-tuning, 0.1 cost 0.6.")
    head_init: str = _f("random", "finetune/lora: the classifier's starting weights. random (seeded); probe: "
                        "first fit the probe's logistic head on the frozen encoder's features (C chosen on "
                        "validation), then train every weight from there (LP-FT, Kumar et al. 2022): the early steps "
                        "then tune features for a head that already works instead of one that guesses; or keep: "
                        "--model_name_or_path is a classifier with this data's labels (an earlier run's output, a "
                        "fine-tuned Hub classifier; matched by name) and training goes on from its own head, e.g. "
                        "a sentiment model adapted to your reviews.",
                        choices=HEAD_INITS, only_for=("finetune", "lora"))
    reinit_layers: int = _f(0, "finetune: re-initialise the top N encoder layers (and the pooler) before training "
                            "(Zhang et al. 2021, for small data).")
    freeze_layers: Optional[int] = _f(None, "finetune/lora: keep the embeddings and the bottom K encoder layers "
                                      "frozen (K < 0: all but the top |K|); 0 freezes the embeddings alone. "
                                      "Default: nothing frozen.")
    per_device_train_batch_size: Optional[int] = _f(None, "Training batch size per process (default per mode: "
                                                    f"{_per_mode('per_device_train_batch_size')}; contrastive's are "
                                                    "pairs).", positive="integer")
    per_device_eval_batch_size: int = _f(128, "Evaluation / encoding batch size per process.",
                                         resume_may_differ=True, positive="integer")
    gradient_accumulation_steps: int = _f(1, "Batches per optimizer step.", positive="integer")
    gradient_checkpointing: bool = _f(False, "Keep only each encoder layer's input during the forward pass and "
                                      "recompute the rest in the backward pass (transformers' activation "
                                      "checkpointing): the same weights, for much less memory on long texts and "
                                      "slower steps (on a CPU, a 512-token fine-tune's peak memory fell by about "
                                      "two thirds for about a fifth more time: benchmarks/RESULTS.md, \"Activation "
                                      "checkpointing\"). May be switched on or off when resuming.",
                                      resume_may_differ=True, only_for=("finetune", "scratch", "lora", "contrastive"))
    pooling: Optional[str] = _f(None, "Sentence representation fed to the head: mean (of token states), cls (raw "
                                "[CLS] state) or pooler (the family's stock head; its export loads with no remote "
                                "code). Default: pooler for " + _modes_where("pooling", "pooler") + " (measured as "
                                "accurate as mean pooling); for the others what the encoder was trained for (mean "
                                "when it ships a sentence-transformers pooling config, else pooler).",
                                choices=POOLINGS)
    probe_layer: int = _f(-1, "probe: which encoder layer's states to pool (-1 = last; k>0 keeps the bottom k "
                          "layers). The exported model keeps only the layers it uses.")
    pair_iterations: Optional[int] = _f(None, "contrastive: rounds of pair sampling; each gives every training text "
                                        "one same-label and one other-label partner (SetFit's num_iterations). "
                                        "Default: as many rounds as the training set has distinct pairs of the "
                                        "more numerous kind (same-label or other-label) per text, as SetFit's "
                                        "oversampling draws, at least 1 and at most 20 (logged).", positive="integer",
                                        only_for=("contrastive",))
    probe_c_grid: str = _f("0.0001,0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1,3,10,30,100", "probe: inverse L2 strengths (as in scikit-learn's C) tried for "
                           "the logistic-regression head; the best on validation is kept.")
    feature_cache_dir: Optional[str] = _f(None, "probe: where encoded features are cached (default: "
                                          "$XDG_CACHE_HOME/xfer_nlp/features, else ~/.cache/xfer_nlp/features). "
                                          "Keyed by weights, tokens, pooling and layer; 4 bytes per feature (1.5 KB "
                                          "a text for a 384-wide encoder). Only a later run's speed-up: delete the "
                                          "folder any time to free its space.",
                                          resume_may_differ=True)
    no_feature_cache: bool = _f(False, "probe: neither read nor write the feature cache.", resume_may_differ=True)
    feature_cache_shard_size: int = _f(50_000, "probe: texts per feature-cache shard. Each shard is written as soon "
                                       "as it is encoded, so a killed encoding of a large set resumes at the first "
                                       "missing shard.", positive="integer", resume_may_differ=True)
    lora_r: int = _f(8, "lora: adapter rank.", positive="integer", only_for=("lora",))
    lora_alpha: int = _f(16, "lora: adapter scaling numerator.", positive="integer", only_for=("lora",))
    lora_dropout: float = _f(0.1, "lora: dropout on the adapter input.", only_for=("lora",))
    lora_target_modules: Optional[str] = _f(None, "lora: comma-separated module names that get adapters (default: "
                                            "the encoder family's attention and feed-forward projections, e.g. "
                                            "BERT's query,key,value,dense inside the encoder layers).",
                                            only_for=("lora",))
    save_lora_adapter: bool = _f(False, "lora: also save the unmerged peft adapter (and head) under "
                                 "OUTPUT_DIR/adapter; the main export always has the adapters merged.",
                                 only_for=("lora",))
    seed: int = _f(42, "Seed for subsets, splits, initialisation, shuffling and dropout.", grid_owned=True)
    mixed_precision: str = _f("auto", "auto, no, fp16 or bf16. auto: what `accelerate launch --mixed_precision` "
                              "set, else what measured fastest: bf16 on CPUs with AVX512-BF16 or AMX (about 2x "
                              "faster at the same accuracy) and on bf16 GPUs for encoders of 100M parameters or "
                              "more; fp32 (no) otherwise, as for the embedded MiniLM on a GPU, whose small steps "
                              "bf16's casts only slow down, and for DeBERTa v1, which fails under autocast.",
                              choices=("auto", "no", "fp16", "bf16"))
    torch_compile: str = _f("no", "finetune/scratch/lora on a CUDA GPU: compile the training step into CUDA graphs, "
                            "so a small encoder's step stops waiting on the host to launch each kernel. cudagraphs: "
                            "torch.compile's cudagraphs backend (the same kernels, compiled again for each padded "
                            "batch shape, about 3 s each); reduce-overhead: inductor's fused kernels, compiled once "
                            "for all shapes. Training batches are padded to a few lengths (16, 24, 32, 48, 64, 96, "
                            "128, ... up to --max_seq_length). Pays on long runs only: on an H200 a MiniLM step at "
                            "32 tokens took 4.7 ms instead of 9.5 (3.2 in bf16), but a 3-epoch sst2 run (650 steps) "
                            "took 26 s (cudagraphs) and 36 s (reduce-overhead) against 11 s without "
                            "(benchmarks/RESULTS.md, \"CUDA graphs\").",
                            choices=TORCH_COMPILE, only_for=("finetune", "scratch", "lora"))
    keep_freed_memory: bool = _f(False, "Linux (glibc): keep the memory a step frees for the next step instead of "
                                 "handing it back to the kernel, which must zero it again when it is next used. "
                                 "Measured at 512 tokens on CPU: 1.3-2x faster steps, but the process never "
                                 "gives memory back: 30 percent more peak RSS over 4 steps, and over a whole "
                                 "polarity2k fine-tune it grew to twice the default's, filling a 24 GB machine "
                                 "within 50 steps (benchmarks/RESULTS.md). Only with memory to spare. Lasts for "
                                 "the rest of the process, so a compare grid runs the cells that set it last. "
                                 "Better where it can be installed: tcmalloc through LD_PRELOAD (1.8x faster "
                                 "512-token steps with less memory than glibc's defaults; the flag does nothing "
                                 "under it).",
                                 resume_may_differ=True)
    save_steps: Optional[int] = _f(None, "Also checkpoint every this many optimizer steps (a checkpoint is always "
                                   "written at each epoch end). Checkpoints live in OUTPUT_DIR/checkpoints.",
                                   resume_may_differ=True, positive="integer")
    save_total_limit: Optional[int] = _f(2, "Keep at most this many checkpoints (oldest deleted first); 0 or None "
                                         "keeps all.", resume_may_differ=True)
    resume_from_checkpoint: Optional[str] = _f(None, "Continue an interrupted run: 'latest' (the newest intact "
                                               "checkpoint in OUTPUT_DIR/checkpoints) or a checkpoint folder.",
                                               resume_may_differ=True, grid_owned=True)
    logging_steps: Optional[int] = _f(None, "Log the training loss (train.log, results.json, the curve, trackers) "
                                      "every this many optimizer steps. Default: about 20 times a run, at least "
                                      "every 50 steps.", resume_may_differ=True, positive="integer")
    report_to: str = _f("none", "Trackers through Accelerate: none, all, or a comma list of tensorboard, wandb, "
                        "trackio (project 'xfer_nlp'; tensorboard's events go to OUTPUT_DIR/xfer_nlp).",
                        resume_may_differ=True)
    run_name: Optional[str] = _f(None, "The run's name in wandb and trackio. Default: the output folder's name; "
                                 "a compare cell's is GRID_FOLDER/CELL.", resume_may_differ=True, grid_owned=True)
    push_to_hub: bool = _f(False, "After training, upload the exported model, results and model card to the Hub.",
                           resume_may_differ=True, grid_owned=True)
    hub_model_id: Optional[str] = _f(None, "Hub repository for --push_to_hub, as user/name (default: the "
                                     "output folder's name under your account).", resume_may_differ=True)
    hub_private_repo: bool = _f(False, "Create the Hub repository as private.", resume_may_differ=True)
    hub_token: Optional[str] = _f(None, "Hub token (default: $HF_TOKEN, else the one `hf auth login` cached). Never "
                                  "written to any output, but a token on the command line is visible to every user "
                                  "of the machine in `ps`: prefer $HF_TOKEN or `hf auth login`.",
                                  resume_may_differ=True)

    @property
    def metric_list(self) -> list[str]:
        """--metrics as a list of module names or paths."""
        return _items(self.metrics)

    @property
    def c_grid(self) -> list[float]:
        """--probe_c_grid as numbers (validated by resolve)."""
        return [float(c) for c in _items(self.probe_c_grid)]

    @property
    def trackers(self) -> list[str]:
        """--report_to as Accelerate tracker names; none is no tracker."""
        return [t for t in _items(self.report_to) if t != "none"]

    @property
    def lora_targets(self) -> list[str] | None:
        """--lora_target_modules as module names, or None for the family's default targets."""
        return _items(self.lora_target_modules or "") or None

    def to_dict(self) -> dict[str, Any]:
        """The config as saved beside results: the token is never written anywhere."""
        return {**dataclasses.asdict(self), "hub_token": None}


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(RunConfig))
# The options that name a file or folder (a model or data option may instead name a Hub id or a registry set).
PATH_FIELDS = ("model_name_or_path", "dataset_name", "train_file", "validation_file", "test_file", "data_dir",
               "output_dir", "feature_cache_dir", "resume_from_checkpoint")
FIELD_TYPES = typing.get_type_hints(RunConfig)  # name -> type (int, Optional[float], ...)
# Settings that may differ between an interrupted run and its resumption without changing what is computed.
RESUME_MAY_DIFFER = frozenset(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("resume_may_differ"))
# Settings only some modes read (name -> those modes): under any other mode a resume need not match them.
# What only an optimizer loop reads, beyond the epochs and learning rate, for a mode without one (loop=None) to name
# as unused; --max_steps, --eval_steps, --early_stopping_patience and --lr_scheduler_type are refused there outright.
LOOP_SETTINGS = ("min_train_steps", "max_grad_norm", "gradient_accumulation_steps", "weight_decay", "warmup_ratio")
MODE_ONLY = {f.name: f.metadata["only_for"] for f in dataclasses.fields(RunConfig) if "only_for" in f.metadata}
# Settings a compare variant may not set: the grid owns them.
GRID_OWNED = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("grid_owned"))


def nearest(name: str, options) -> str:
    """' (did you mean X?)' when a close spelling exists, else ''."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unused_settings(cfg: RunConfig) -> list[str]:
    """The flags given a value that cfg.mode never reads, as '--name value': a setting the mode has none of (the
    probe's learning rate and epochs) and the flags of other modes (LoRA's rank, contrastive's pair rounds). Not
    refused, since compare hands every run flag to every cell; a run logs them."""
    spec, default = MODES[cfg.mode], RunConfig()
    unused = [k for k, v in spec.defaults.items() if v is None and getattr(cfg, k) is not None]
    if not spec.loop:  # the optimizer's and the schedule's settings, beside its defaults of None above
        unused += [k for k in LOOP_SETTINGS if getattr(cfg, k) != spec.defaults.get(k, getattr(default, k))]
    unused += [k for k, modes in MODE_ONLY.items() if cfg.mode not in modes and getattr(cfg, k) != getattr(default, k)]
    return [f"--{k} {getattr(cfg, k)}" for k in unused]


SEED_MAX = 2**32 - 1


def repo_id_problem(hub_model_id: str | None, output_dir: str | Path) -> str | None:
    """What is wrong with the Hub repository a push would name (--hub_model_id, or without it the output folder's
    name), in huggingface_hub's words; None for a valid one. Asked before a run trains (a typo had surfaced only at
    the push, after training) and before push reaches the network."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = Path(str(output_dir)).name if hub_model_id is None else str(hub_model_id)
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        if hub_model_id is None:
            return (f"Without --hub_model_id, a push names the repository after the output folder, '{name}', which is "
                    "not a Hub repository name (letters, digits, '-', '_' and '.', at most 96). Pass --hub_model_id "
                    "user/name.")
        why = str(e).replace(" Use `repo_type` argument if needed.", "")
        return f"--hub_model_id '{name}' is not a Hub repository id: {why}"
    return None


def with_options(config: RunConfig | None, options: dict, allowed: tuple[str, ...] = FIELD_NAMES,
                 what: str = "") -> RunConfig:
    """`config` (or the defaults) with keyword options applied, for the Python API: a config that is not a
    RunConfig (`run("probe")`) and an option that is not a field (or not one of `allowed`) are named."""
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(f"The config argument is a RunConfig (or None), got {type(config).__name__} {config!r}. "
                          "Give options as keywords: mode='probe', dataset_name='mr'.")
    unknown = [k for k in options if k not in FIELD_NAMES]
    if unknown:
        raise ConfigError("Unknown option(s): " + "; ".join(f"'{k}'{nearest(k, FIELD_NAMES)}" for k in unknown))
    other = [k for k in options if k not in allowed]
    if other:
        raise ConfigError(f"Option(s) {', '.join(repr(k) for k in other)} do not apply to {what}. It takes "
                          f"{', '.join(allowed)}.")
    return dataclasses.replace(config or RunConfig(), **options)


def as_text(value) -> str:
    """A text option as the command line writes it, from however Python or YAML gave it: a path as its text, a list
    as a comma list ([0.1, 1] reads as "0.1,1"), anything else as str()."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the per-mode defaults and the output folder, then validate; returns a new config."""
    problems = []
    # Text options as a notebook or a YAML file may give them: a comma list as a list ([0.1, 1] reads as "0.1,1"),
    # a path as a Path (which had stopped the run at its end, when results.json could not be written).
    cfg = dataclasses.replace(cfg, **{f.name: as_text(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                                      if isinstance(getattr(cfg, f.name), (list, tuple, os.PathLike))
                                      and FIELD_TYPES[f.name] in (str, Optional[str])})
    # A shell expands ~ on the command line; from YAML or Python it had reached the disk as a folder named "~".
    cfg = dataclasses.replace(cfg, **{k: os.path.expanduser(getattr(cfg, k)) for k in PATH_FIELDS
                                      if isinstance(getattr(cfg, k), str) and getattr(cfg, k).startswith("~")})
    if cfg.mode not in MODES:
        raise ConfigError(f"Unknown mode '{cfg.mode}'{nearest(cfg.mode, MODES)}. Choose one of: {', '.join(MODES)}.")
    spec = MODES[cfg.mode]
    filled = {k: v for k, v in spec.defaults.items() if getattr(cfg, k) is None}
    if cfg.num_train_epochs is not None and cfg.min_train_steps is None:
        filled["min_train_steps"] = 0  # epochs the user asked for are the epochs that run
    if cfg.output_dir is None:
        data = Path(str(cfg.train_file)).parent.name if cfg.train_file else Path(str(cfg.dataset_name)).stem
        filled["output_dir"] = str(Path("runs") / f"{data or 'data'}-{cfg.mode}")
    cfg = dataclasses.replace(cfg, **filled)

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"--{f.name} must be a finite number, got {value}.")
    if cfg.output_dir is not None and not str(cfg.output_dir).strip():
        problems.append("--output_dir is empty, which would write into the working directory. Name a folder.")

    def positive(name, integer=False):
        value = getattr(cfg, name)
        if value is None:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (integer and value != int(value)):
            problems.append(f"--{name} must be a positive {'integer' if integer else 'number'}, got {value!r}.")

    for f in dataclasses.fields(cfg):
        if "positive" in f.metadata:
            positive(f.name, integer=f.metadata["positive"] == "integer")
    if spec.loop:
        for name in ("num_train_epochs", "learning_rate"):
            if getattr(cfg, name) is None:
                problems.append(f"--{name} is required for mode {cfg.mode}.")
    if cfg.min_train_steps is not None and cfg.min_train_steps < 0:
        problems.append(f"--min_train_steps must be >= 0 (0 = off), got {cfg.min_train_steps}.")
    if cfg.max_grad_norm < 0:
        problems.append(f"--max_grad_norm must be >= 0 (0 = off), got {cfg.max_grad_norm}.")
    if not (isinstance(cfg.seed, int) and 0 <= cfg.seed <= SEED_MAX):  # numpy's seeding refuses the others, late
        problems.append(f"--seed must be an integer from 0 to {SEED_MAX}, got {cfg.seed!r}.")
    if not spec.loop and (cfg.max_steps or cfg.eval_steps or cfg.early_stopping_patience):
        problems.append(f"--max_steps, --eval_steps and --early_stopping_patience do not apply to {cfg.mode}: its "
                        "head is fitted by L-BFGS, not stepped.")
    if (cfg.push_to_hub or cfg.hub_model_id is not None) and (
            problem := repo_id_problem(cfg.hub_model_id, cfg.output_dir)):
        problems.append(problem)
    if cfg.metric_for_best_model not in BEST_METRICS and not cfg.metrics.strip():  # else checked once they load
        problems.append(f"--metric_for_best_model '{cfg.metric_for_best_model}'"
                        f"{nearest(cfg.metric_for_best_model, BEST_METRICS)} is not a computed metric; choose one of "
                        f"{', '.join(BEST_METRICS)}, or add the module that computes it with --metrics.")
    if isinstance(cfg.max_seq_length, int) and 0 < cfg.max_seq_length < 3:  # trained, then its reading was refused
        problems.append(f"--max_seq_length {cfg.max_seq_length} leaves no room for text beside the encoder's two "
                        "special tokens ([CLS] and [SEP]); use at least 3 (sentences need about 64 tokens).")
    elif cfg.head_tokens is not None and not 0 <= cfg.head_tokens < cfg.max_seq_length - 2:
        problems.append(f"--head_tokens {cfg.head_tokens} leaves no room for the end of the text within "
                        f"--max_seq_length {cfg.max_seq_length} (and its special tokens); use 0 to "
                        f"{cfg.max_seq_length - 3}, or raise --max_seq_length.")
    if cfg.chunk_stride is not None and not 0 < cfg.chunk_stride <= cfg.max_seq_length - 2:
        problems.append(f"--chunk_stride must be between 1 and the window's text tokens (--max_seq_length "
                        f"{cfg.max_seq_length} less its special tokens), got {cfg.chunk_stride}; a larger stride "
                        "would skip text between windows.")
    if cfg.chunk_stride is not None and cfg.long_text != "chunk":
        problems.append("--chunk_stride applies to --long_text chunk only.")
    read = [c for c in (cfg.text_column, cfg.text_pair_column) if c is not None]
    if cfg.label_column in read:  # the label would be read as the text: a perfect and worthless score
        problems.append(f"--label_column '{cfg.label_column}' is the "
                        f"--{'text' if cfg.label_column == cfg.text_column else 'text_pair'}_column too; the model "
                        "would read its answer. Name the column that holds the text.")
    if cfg.text_pair_column is not None:
        if cfg.text_pair_column == cfg.text_column:
            problems.append(f"--text_pair_column '{cfg.text_pair_column}' is the --text_column too; name the column "
                            "of each example's second text.")
        if cfg.truncation not in ("auto", "head") or cfg.long_text != "truncate":
            problems.append("--truncation tail/head+tail and --long_text chunk cut one text; a pair "
                            "(--text_pair_column) is cut from the end of its longer text, as pipeline() cuts it. Leave "
                            "them out with pairs.")
    for name, allowed in (("truncation", TRUNCATIONS), ("long_text", LONG_TEXT), ("head_init", HEAD_INITS)):
        if getattr(cfg, name) not in allowed:
            problems.append(f"--{name} '{getattr(cfg, name)}'{nearest(getattr(cfg, name), allowed)} is not one of "
                            f"{', '.join(allowed)}.")
    if cfg.torch_compile not in TORCH_COMPILE:
        problems.append(f"--torch_compile '{cfg.torch_compile}'{nearest(cfg.torch_compile, TORCH_COMPILE)} is not one "
                        f"of {', '.join(TORCH_COMPILE)}.")
    elif cfg.torch_compile != "no" and cfg.mode not in MODE_ONLY["torch_compile"]:
        problems.append(f"--torch_compile does not apply to {cfg.mode}: it compiles the classifier's training step. "
                        f"Use it with {' or '.join(MODE_ONLY['torch_compile'])}.")
    if cfg.gradient_checkpointing and cfg.mode not in MODE_ONLY["gradient_checkpointing"]:
        problems.append(f"--gradient_checkpointing does not apply to {cfg.mode}: its encoder only encodes, with no "
                        "backward pass whose activations it would save. Use it with "
                        f"{', '.join(MODE_ONLY['gradient_checkpointing'])}.")
    if cfg.class_weights not in ("none", "balanced"):
        try:
            weights = [float(w) for w in cfg.class_weights.split(",")]
            if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
                raise ValueError
        except ValueError:
            problems.append(f"--class_weights must be none, balanced or comma-separated non-negative numbers (not "
                            f"all 0), got '{cfg.class_weights}'.")
    if cfg.weight_decay < 0:
        problems.append(f"--weight_decay must be >= 0, got {cfg.weight_decay}.")
    if not 0 <= (cfg.warmup_ratio or 0) < 1:
        problems.append(f"--warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}.")
    if cfg.cv_folds == 1:  # 0 and below: the positive-integer check
        problems.append("--cv_folds must be at least 2 (one fold to test on, the others to train on), got 1.")
    elif cfg.cv_folds and not 0 <= cfg.cv_fold < cfg.cv_folds:
        problems.append(f"--cv_fold must be between 0 and {cfg.cv_folds - 1} (--cv_folds {cfg.cv_folds}), got "
                        f"{cfg.cv_fold}.")
    elif not cfg.cv_folds and cfg.cv_fold:
        problems.append("--cv_fold needs --cv_folds (how many folds the data is cut into).")
    if not 0 < cfg.validation_split_ratio < 1:
        problems.append(f"--validation_split_ratio must be in (0, 1), got {cfg.validation_split_ratio}.")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}.")
    if cfg.pooling is not None and cfg.pooling not in POOLINGS:
        problems.append(f"--pooling '{cfg.pooling}'{nearest(cfg.pooling, POOLINGS)} is not one of {', '.join(POOLINGS)}.")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 0:
        problems.append(f"--save_total_limit must be >= 0, got {cfg.save_total_limit}.")
    if cfg.resume_from_checkpoint and not spec.loop:
        problems.append(f"--resume_from_checkpoint does not apply to {cfg.mode}: it has no training loop to resume; "
                        "a second run reuses the cached features and takes seconds.")
    if cfg.resume_from_checkpoint and cfg.overwrite_output_dir:
        problems.append("--resume_from_checkpoint and --overwrite_output_dir contradict each other; pass one.")
    if cfg.lr_scheduler_type not in SCHEDULERS:
        problems.append(f"--lr_scheduler_type '{cfg.lr_scheduler_type}'{nearest(cfg.lr_scheduler_type, SCHEDULERS)} "
                        f"is not one of {', '.join(SCHEDULERS)}.")
    if not 0 < cfg.layer_lr_decay <= 1:
        problems.append(f"--layer_lr_decay must be in (0, 1] (1.0 = off), got {cfg.layer_lr_decay}.")
    if cfg.unfreeze_interval <= 0:
        problems.append(f"--unfreeze_interval must be a positive number of epochs, got {cfg.unfreeze_interval}.")
    if cfg.stlr_ratio < 1:
        problems.append(f"--stlr_ratio must be >= 1, got {cfg.stlr_ratio}.")
    if cfg.head_init != "random" and cfg.mode not in MODE_ONLY["head_init"]:
        if MODES[cfg.mode].fitted_head:
            why = "its head is the probe's fitted head already." if cfg.head_init == "probe" else \
                "its head is fitted afresh on the encoder's features."
        else:
            why = "a head fitted on random features would guide nothing." if cfg.head_init == "probe" else \
                "it starts from random weights, head included."
        problems.append(f"--head_init {cfg.head_init} does not apply to {cfg.mode}: {why} Use it with "
                        f"{' or '.join(MODE_ONLY['head_init'])}.")
    if cfg.reinit_layers < 0:
        problems.append(f"--reinit_layers must be >= 0, got {cfg.reinit_layers}.")
    used = {"gradual_unfreezing": cfg.gradual_unfreezing, "layer_lr_decay": cfg.layer_lr_decay != 1.0,
            "freeze_layers": cfg.freeze_layers is not None, "reinit_layers": cfg.reinit_layers != 0}
    assert used.keys() == set(ENCODER_FLAGS)
    for name in ENCODER_FLAGS:
        if used[name] and name not in spec.encoder_flags:
            problems.append(f"--{name} does not apply to mode {cfg.mode}: {spec.why_not}. Use it with "
                            f"{' or '.join(modes_with(name))}.")
    if not spec.loop and cfg.lr_scheduler_type != "linear":
        problems.append(f"--lr_scheduler_type does not apply to {cfg.mode}: its head is fitted by L-BFGS, not "
                        "stepped.")
    if cfg.probe_layer == 0:
        problems.append("--probe_layer 0 would be the embeddings alone; use -1 for the last layer or k>0 for layer k.")
    try:
        grid = cfg.c_grid
        if not grid or min(grid) <= 0:
            raise ValueError
    except ValueError:
        problems.append(f"--probe_c_grid must be comma-separated positive numbers, got '{cfg.probe_c_grid}'.")
    for tracker in _items(cfg.report_to):
        if tracker not in REPORT_TO:
            problems.append(f"--report_to '{tracker}'{nearest(tracker, REPORT_TO)} is not one of {', '.join(REPORT_TO)}.")
        elif tracker in TRACKER_AVAILABLE and not TRACKER_AVAILABLE[tracker]():
            # Accelerate would drop a named tracker whose package is missing without a word: the run would log nowhere.
            problems.append(f"--report_to {tracker}: the {tracker} package is not installed. Install it (pip install "
                            f"{tracker}), or leave it out of --report_to.")
    if problems:
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys and drops the other silently (a key added at the end of a copied
    recipe YAML that already had it); YAML itself says a mapping's keys are unique, so a repeated one is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is set twice; keep one of the two",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path, known: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Read a YAML config; unknown keys are errors that suggest the nearest field."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config file '{path}' is a folder. Pass --config with the path of a YAML file.")
    if not path.exists():  # a pipe (bash's `--config <(...)`) exists and is read as a file is
        raise ConfigError(f"Config file '{path}' does not exist. Pass --config with the path of a YAML file.")
    try:
        with path.open(encoding="utf-8") as stream:  # a file, not its text: YAML's messages then name it
            data = yaml.load(stream, Loader=_UniqueKeys) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of option: value, got {type(data).__name__}.")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"Config file '{path}' has unknown key(s): "
                          + "; ".join(f"'{k}'{nearest(k, known)}" for k in unknown)
                          + ". Run with --help for the full list of options.")
    # argparse converts a text default by the flag's type and blames the flag: named here by file and key instead.
    for key, value in data.items():
        kind = FIELD_TYPES.get(key)
        if not isinstance(value, str) or kind not in (int, float, bool, Optional[int], Optional[float]):
            continue
        try:
            string_to_bool(value) if kind is bool else (int if kind in (int, Optional[int]) else float)(value)
        except (ValueError, argparse.ArgumentTypeError):
            wanted = {bool: "true or false", int: "an integer", Optional[int]: "an integer"}.get(kind, "a number")
            raise ConfigError(f"Config file '{path}': {key}: {value!r} is not {wanted}.") from None
    return data


def parse_args(argv: list[str] | None = None, default_config_dir: str | Path | None = None,
               extra_types: tuple = (), prog: str | None = None, description: str | None = None,
               hidden: tuple[str, ...] = ()) -> Any:
    """Defaults < YAML (--config, else <default_config_dir>/<mode>.yaml) < command line.

    Returns the RunConfig, or (RunConfig, *extras) when extra dataclass types (e.g. compare's grid) are given;
    --help lists the extras' flags first and leaves out the fields in `hidden` (still parsed, for the caller to
    refuse). `prog` names the command in usage lines (default: the script's name).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    types = (*extra_types, RunConfig)
    known = FIELD_NAMES + tuple(f.name for t in extra_types for f in dataclasses.fields(t))
    # No prefix matching: a misspelt flag must fail, not silently land on a longer one.
    parser = ArgumentParser(types, prog=prog, allow_abbrev=False, description=description or (
        f"Train a text classifier in one of {len(MODES)} transfer modes."))
    for action in parser._actions:  # argparse's list of the parser's arguments; no public way to hide one later
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    parser.add_argument("--config", default=None,
                        help="YAML file of option: value pairs; command-line flags override it. Default: the "
                             "recipe's config for the chosen --mode, when the recipe has one.")
    pre, _ = parser.parse_known_args(argv)
    config_file = pre.config
    if config_file is None and default_config_dir is not None:
        candidate = Path(default_config_dir) / f"{pre.mode}.yaml"
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        parser.set_defaults(**load_yaml(config_file, known))
    *parsed, _config_namespace, extra = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if extra:
        flags = [a for a in extra if a.startswith("--")]
        hints = "; ".join(f"'{a}'{nearest(a[2:].split('=')[0], known)}" for a in flags) or " ".join(extra)
        raise ConfigError(f"Unknown command-line argument(s): {hints}. Run with --help for the full list of options.")
    return parsed[-1] if not extra_types else (parsed[-1], *parsed[:-1])
