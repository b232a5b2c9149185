"""The one place that knows each encoder family's anatomy: its layers, embeddings, head and LoRA targets.

Every other module asks a `Layout` (a family applied to one built model) instead of reaching for `.bert`,
`.classifier` or BERT's module names. Names are read with peft's wrapper prefixes removed, so a LoRA model is
laid out like the plain one.

Depths count down from the output, which is what layer-wise learning rates and gradual unfreezing share: the
head is depth 0 (the classification head and whatever sits between the last encoder layer and it: BERT's pooler,
ModernBERT's final norm), the top encoder layer depth 1, ..., the bottom layer depth L, and everything else
(embeddings, relative-position tables, embedding projections) depth L + 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .modeling import XferPooledConfig

# What a pooled head (xfer_nlp.modeling, mean or cls) calls its parts: encoder body, then the linear classifier.
POOLED_BODY = "encoder"
POOLED_HEAD = ("classifier",)
POOLED_OUT = "classifier"


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    body: str  # the attribute of its stock *ForSequenceClassification that holds the encoder
    layer_pattern: str  # regex whose group 1 is the encoder block's index, matched on peft-free names
    head: tuple[str, ...]  # module paths of the stock classification head (new weights when fine-tuning starts)
    out: str  # the head's final Linear: what a probe fits and what "the sentence features" feed
    top: tuple[str, ...] = ()  # pretrained modules between the last layer and the head (depth 0, not re-created)
    lora_targets: str = r".*\.(query|key|value|dense)"  # default LoRA target modules (a peft full-match regex)
    token_types: bool = True  # whether its models take token_type_ids
    position_offset: bool = False  # positions start after the padding index (RoBERTa's scheme)
    autocast: bool = True  # whether its transformers forward runs under bf16/fp16 autocast
    transformers: str = "4.57"  # the oldest transformers whose pipeline() loads its exports, as the tests check

    def max_length(self, config) -> int | None:
        """The longest input its position embeddings cover; None where positions are relative only."""
        if getattr(config, "position_biased_input", True) is False:
            return None
        positions = getattr(config, "max_position_embeddings", None)
        if positions is None:
            return None
        return positions - (config.pad_token_id or 0) - 1 if self.position_offset else positions


# LoRA's default targets in a BERT-style layer: its query, key and value, and every dense projection after them
BERT_LAYERS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)"
# ... and in a layer of separate attention projections and a gated feed-forward block (Llama's names)
GATED_LAYERS = r".*layers\.\d+\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

FAMILIES = (
    Family("BERT", ("bert",), "bert", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier", top=("bert.pooler",),
           lora_targets=BERT_LAYERS),
    Family("ERNIE", ("ernie",), "ernie", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier",
           top=("ernie.pooler",), lora_targets=BERT_LAYERS),
    # MobileBERT narrows each layer through bottlenecks. Its activations outgrow fp16 (NaN losses: transformers issue
    # 11327), which the loop's non-finite-loss stop names; auto never picks fp16, and bf16 holds them.
    Family("MobileBERT", ("mobilebert",), "mobilebert", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier",
           top=("mobilebert.pooler",), lora_targets=BERT_LAYERS),
    Family("RoBERTa / XLM-R / CamemBERT", ("roberta", "xlm-roberta", "camembert"), "roberta",
           r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier.out_proj", lora_targets=BERT_LAYERS,
           position_offset=True),
    Family("data2vec-text", ("data2vec-text",), "data2vec_text", r"\.encoder\.layer\.(\d+)\.", ("classifier",),
           "classifier.out_proj", lora_targets=BERT_LAYERS, position_offset=True),
    # Longformer reads long documents (4,096 tokens) in local windows, with global attention on the first token.
    Family("Longformer", ("longformer",), "longformer", r"\.encoder\.layer\.(\d+)\.", ("classifier",),
           "classifier.out_proj", lora_targets=r".*encoder\.layer\.\d+\..*(query|key|value|_global|dense)",
           position_offset=True),
    Family("DistilBERT", ("distilbert",), "distilbert", r"\.transformer\.layer\.(\d+)\.", ("pre_classifier", "classifier"),
           "classifier", lora_targets=r".*transformer\.layer\.\d+\..*(q_lin|k_lin|v_lin|out_lin|lin1|lin2)",
           token_types=False),
    # ALBERT shares one layer's weights across its depth: it has as many distinct blocks as layer groups (often 1).
    Family("ALBERT", ("albert",), "albert", r"\.albert_layer_groups\.(\d+)\.", ("classifier",), "classifier",
           top=("albert.pooler",), lora_targets=r".*albert_layer_groups\.\d+\..*(query|key|value|dense|ffn|ffn_output)"),
    Family("ELECTRA", ("electra",), "electra", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier.out_proj",
           lora_targets=BERT_LAYERS),
    Family("DeBERTa-v2 / v3", ("deberta-v2",), "deberta", r"\.encoder\.layer\.(\d+)\.", ("pooler", "classifier"), "classifier",
           lora_targets=r".*encoder\.layer\.\d+\..*(query_proj|key_proj|value_proj|dense)"),
    # DeBERTa (v1) projects query, key and value in one in_proj. Under autocast its attention masks bf16/fp16 scores
    # with the fp32 minimum, which they cannot hold: "value cannot be converted to type c10::BFloat16 without
    # overflow" at the first forward (transformers issue 35332, unfixed in the transformers 5 this runs on).
    Family("DeBERTa (v1)", ("deberta",), "deberta", r"\.encoder\.layer\.(\d+)\.", ("pooler", "classifier"),
           "classifier", lora_targets=r".*encoder\.layer\.\d+\..*(in_proj|dense)", autocast=False),
    # ConvBERT gives half its attention heads to span-based convolutions: LoRA adapts their Linear projections too
    # (their depthwise convolution, which peft cannot merge, stays frozen).
    Family("ConvBERT", ("convbert",), "convbert", r"\.encoder\.layer\.(\d+)\.", ("classifier",),
           "classifier.out_proj",
           lora_targets=r".*encoder\.layer\.\d+\..*(query|key|value|conv_kernel_layer|conv_out_layer|dense)"),
    Family("RemBERT", ("rembert",), "rembert", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier",
           top=("rembert.pooler",), lora_targets=BERT_LAYERS),
    # MegatronBERT and XLM-RoBERTa-XL normalise before each sublayer and once more after the last layer: that final
    # LayerNorm feeds the head, so it sits with it (depth 0), as ModernBERT's final norm does.
    Family("MegatronBERT", ("megatron-bert",), "bert", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier",
           top=("bert.encoder.ln", "bert.pooler"), lora_targets=BERT_LAYERS),
    Family("XLM-RoBERTa-XL", ("xlm-roberta-xl",), "roberta", r"\.encoder\.layer\.(\d+)\.", ("classifier",),
           "classifier.out_proj", top=("roberta.encoder.LayerNorm",), lora_targets=BERT_LAYERS, position_offset=True),
    Family("MPNet", ("mpnet",), "mpnet", r"\.encoder\.layer\.(\d+)\.", ("classifier",), "classifier.out_proj",
           lora_targets=r".*encoder\.layer\.\d+\..*(attn\.q|attn\.k|attn\.v|attn\.o|dense)", token_types=False,
           position_offset=True),
    # Sentence encoders with rotary positions and gated feed-forwards (nomic-embed-text, gte-multilingual), which
    # transformers ports natively since 5 (the original checkpoints' weights renamed as they load): without
    # trust_remote_code, and without transformers 4, which has neither.
    Family("NomicBERT", ("nomic_bert",), "nomic_bert", r"\.layers\.(\d+)\.", ("classifier",), "classifier",
           top=("nomic_bert.pooler",), lora_targets=GATED_LAYERS, transformers="5.25"),
    Family("GTE", ("gte",), "gte", r"\.layers\.(\d+)\.", ("classifier",), "classifier", top=("gte.pooler",),
           lora_targets=GATED_LAYERS, transformers="5.25"),
    # EuroBERT classifies each token and averages the logits ("late" pooling, its default; sentence_features).
    Family("EuroBERT", ("eurobert",), "model", r"\.layers\.(\d+)\.", ("dense", "classifier"), "classifier",
           top=("model.norm",), lora_targets=GATED_LAYERS, token_types=False, transformers="5.25"),
    Family("ModernBERT", ("modernbert",), "model", r"\.layers\.(\d+)\.", ("head", "classifier"), "classifier",
           top=("model.final_norm",), lora_targets=r".*layers\.\d+\..*(Wqkv|Wo|Wi)", token_types=False),
)
BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(model_type: str, source: str) -> Family:
    """The family of a config's model_type; an unknown one stops the run before any weights are read."""
    if model_type in BY_TYPE:
        return BY_TYPE[model_type]
    raise ConfigError(f"'{source}' is a '{model_type}' model, which xfer_nlp does not know how to take apart. "
                      f"Supported encoder families: {', '.join(f.name for f in FAMILIES)} (model types "
                      f"{', '.join(sorted(BY_TYPE))}).")


def position_limit(config) -> int | None:
    """The longest input a classifier's config lets it read: its family's rule where the family is known (an
    xfer_nlp pooled export: its encoder's), else the config's max_position_embeddings; None where positions are
    relative only."""
    config = config.encoder if config.model_type == XferPooledConfig.model_type else config
    family = BY_TYPE.get(config.model_type)
    return family.max_length(config) if family else getattr(config, "max_position_embeddings", None)


def autocast_refusal(config, source: str, asked: str) -> str | None:
    """Why `asked` (bf16 or fp16 autocast, or a launch's mixed precision) cannot run a model of this config's family;
    None where it can."""
    config = config.encoder if config.model_type == XferPooledConfig.model_type else config
    family = BY_TYPE.get(config.model_type)
    if family is None or family.autocast:
        return None
    return (f"'{source}' is a {family.name} model, which fails under {asked} autocast in transformers (its attention "
            "fills masked bf16/fp16 scores with the fp32 minimum, which overflows them: transformers issue 35332). "
            "Run it in fp32: --mixed_precision no (predict: --precision fp32).")


def check_reach(config, max_seq_length: int, source: str) -> None:
    """Refuse a window longer than the model's positions cover, before anything reads a text: the model would fail
    on the first longer one."""
    limit = position_limit(config)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {max_seq_length} is beyond what '{source}' can read: its position "
                          f"embeddings cover {limit} tokens. Use --max_seq_length {limit} or less.")


_PEFT = re.compile(r"^base_model\.model\.|\.(modules_to_save|original_module)\.default(?=\.|$)|\.original_module(?=\.|$)|"
                   r"\.base_layer(?=\.|$)|\.lora_[AB]\.default(?=\.|$)|\.lora_embedding_[AB]\.default(?=\.|$)")


def plain_name(name: str) -> str:
    """A parameter or module name without peft's wrapper parts."""
    return _PEFT.sub("", name)


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Layout:
    """One built model's anatomy: `family` read against its real parameter names."""

    family: Family
    pooled: bool  # an xfer_nlp mean/cls head (modeling.py), whose body is `encoder` and head `classifier`
    layers: int

    @property
    def head(self) -> tuple[str, ...]:
        return POOLED_HEAD if self.pooled else self.family.head

    @property
    def out(self) -> str:
        return POOLED_OUT if self.pooled else self.family.out

    @property
    def top(self) -> tuple[str, ...]:
        if not self.pooled:
            return self.family.top
        # A pooled head's body is `encoder` and has no pooler; ModernBERT's final norm stays in it.
        body = len(self.family.body)
        return tuple(POOLED_BODY + t[body:] for t in self.family.top if not t.endswith(".pooler"))

    def layer_index(self, name: str) -> int | None:
        m = re.search(self.family.layer_pattern, "." + plain_name(name) + ".")
        return int(m.group(1)) if m else None

    def depth(self, name: str) -> int:
        """0 for the head, 1 for the top encoder layer, ..., `layers` for the bottom one, `layers + 1` below."""
        plain = plain_name(name)
        if under(plain, self.head) or under(plain, self.top):
            return 0
        index = self.layer_index(plain)
        return self.layers + 1 if index is None else self.layers - index

    def label(self, depth: int) -> str:
        if depth == 0:
            return "head"
        if depth == self.layers + 1:
            return "embeddings"
        return f"layer.{self.layers - depth}"

    def is_top(self, name: str) -> bool:
        return under(plain_name(name), self.top)

    def is_head(self, name: str) -> bool:
        return under(plain_name(name), self.head)

    def is_out(self, name: str) -> bool:
        return under(plain_name(name), (self.out,))


def layout(model: torch.nn.Module, family: Family) -> Layout:
    from .modeling import XferPooledForSequenceClassification

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    pooled = isinstance(base, XferPooledForSequenceClassification)
    probe = Layout(family, pooled, 0)
    found = {i for n, _ in model.named_parameters() if (i := probe.layer_index(n)) is not None}
    if not found:
        raise ConfigError(f"Found no encoder layers in {type(base).__name__} (expected names matching "
                          f"{family.layer_pattern!r} for {family.name}).")
    return Layout(family, pooled, max(found) + 1)


def block_classes(model: torch.nn.Module, lay: Layout) -> list[str]:
    """The class names of the model's encoder blocks (BertLayer, RobertaLayer, TransformerBlock, ...)."""
    names = set()
    for name, module in model.named_modules():
        dotted = "." + plain_name(name) + "."
        m = re.search(lay.family.layer_pattern, dotted)
        if m and m.end() == len(dotted):  # the block itself, not a module inside it
            names.add(type(module).__name__)
    return sorted(names)


def out_layer(model: torch.nn.Module, lay: Layout) -> torch.nn.Linear:
    """The head's final Linear (inside DDP's and peft's wrappers; peft's copy that trains and is saved)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):  # contrastive's loss, in a DDP launch
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = base.get_submodule(lay.out)
    if hasattr(module, "modules_to_save"):
        module = module.modules_to_save["default"]
    return module


def model_inputs(batch: dict) -> dict:
    """A batch without what only the loop reads: the labels and each row's document (batches.tokenize)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "doc")}


def sentence_features(model: torch.nn.Module, lay: Layout, batch: dict) -> torch.Tensor:
    """What the head's final Linear reads, for any family and head: captured on its input during a forward pass.

    One rule for every head (mean or cls pooling, BERT's pooler, RoBERTa's dense + tanh, DistilBERT's
    pre-classifier), so the probe's fitted weights, written into that Linear, compute exactly these logits.
    """
    captured = []
    hook = out_layer(model, lay).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(**model_inputs(batch))
    finally:
        hook.remove()
    features = captured[0]
    if features.dim() == 3:  # a head that classifies each token and averages the logits over the text (EuroBERT's
        # "late" pooling): the Linear of the average is the average of the Linear, so the text's feature is the
        # average of its tokens' inputs to the Linear, over the tokens the model averages
        mask = batch["attention_mask"].unsqueeze(-1).to(features.dtype)
        features = (features * mask).sum(dim=1) / mask.sum(dim=1)
    return features
