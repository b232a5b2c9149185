"""A classifier over any transformers encoder whose head reads mean-pooled or raw first-token states.

Stock `*ForSequenceClassification` heads read the first token (through a pooler or a dense layer); sentence
encoders such as the embedded MiniLM were trained for mean pooling, where a linear head scores far better. No stock
class expresses that, so exports of this head carry this file: it imports torch and transformers only, and
`save_pretrained` copies it beside the weights with an `auto_map` in config.json, so
`pipeline("text-classification", model=FOLDER, trust_remote_code=True)` loads the model where only transformers is
installed. Its model_type is its own, so loading it without trust_remote_code fails loudly instead of building a
stock head with random weights.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class XferPooledConfig(PretrainedConfig):
    """`encoder` is the wrapped encoder's own config (any family); `pooling` is mean or cls; `normalize` scales
    each sentence vector to unit length before the head (contrastive: its cosine loss trains directions only)."""

    model_type = "xfer-pooled"
    sub_configs = {"encoder": AutoConfig}

    def __init__(self, encoder: dict | PretrainedConfig | None = None, pooling: str = "mean",
                 classifier_dropout: float | None = None, normalize: bool = False, **kwargs):
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        self.normalize = normalize
        super().__init__(**kwargs)


class XferPooledForSequenceClassification(PreTrainedModel):
    config_class = XferPooledConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: XferPooledConfig):
        super().__init__(config)
        if config.pooling not in ("mean", "cls"):
            raise ValueError(f"XferPooledConfig.pooling must be 'mean' or 'cls', got {config.pooling!r}")
        self.num_labels = config.num_labels
        self.encoder = _bare_encoder(config.encoder)
        enc = config.encoder
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = next((getattr(enc, k) for k in ("hidden_dropout_prob", "dropout", "embedding_dropout")
                            if isinstance(getattr(enc, k, None), float)), 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(enc.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is self.classifier:
            module.weight.data.normal_(0.0, getattr(self.config.encoder, "initializer_range", 0.02))
            module.bias.data.zero_()

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def features(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> torch.Tensor:
        """The sentence vector the head reads (before dropout)."""
        kwargs.pop("return_dict", None)  # peft passes it; this model always returns a dataclass
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        elif attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        logits = self.classifier(self.dropout(self.features(input_ids, attention_mask, token_type_ids, **kwargs)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _bare_encoder(config: PretrainedConfig) -> PreTrainedModel:
    """The family's base model without a pooler (this head never reads one, and DDP rejects unused weights)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    cls = MODEL_MAPPING[type(config)]
    return cls(config, **no_pooler(cls))


def no_pooler(cls) -> dict:
    """The keyword that builds a base model class without its pooler, where it has one."""
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


XferPooledConfig.register_for_auto_class()
XferPooledForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
