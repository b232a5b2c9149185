"""A BERT classifier whose head reads mean-pooled or raw [CLS] states, registered with transformers' Auto classes.

Stock `BertForSequenceClassification` always feeds the [CLS] pooler (dense + tanh) to its head. Sentence encoders
such as the embedded MiniLM were trained for mean pooling, where a linear head scores far better. Importing
`xfer_nlp` registers `xfer-bert` so `AutoModelForSequenceClassification` and `pipeline()` load it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel


class XferBertConfig(BertConfig):
    model_type = "xfer-bert"

    def __init__(self, pooling: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling


class XferBertForSequenceClassification(BertPreTrainedModel):
    config_class = XferBertConfig
    config: XferBertConfig

    def __init__(self, config: XferBertConfig):
        super().__init__(config)
        if config.pooling not in ("mean", "cls"):
            raise ValueError(f"XferBertConfig.pooling must be 'mean' or 'cls', got {config.pooling!r}")
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def features(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> torch.Tensor:
        """The sentence vector the head reads (before dropout)."""
        kwargs.pop("return_dict", None)  # peft passes it; this model always returns a dataclass
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           return_dict=True, **kwargs).last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        logits = self.classifier(self.dropout(self.features(input_ids, attention_mask, token_type_ids, **kwargs)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register("xfer-bert", XferBertConfig)
AutoModelForSequenceClassification.register(XferBertConfig, XferBertForSequenceClassification)


def sentence_features(model, batch: dict) -> torch.Tensor:
    """What the classifier head of `model` reads, for either head type (stock BERT: the pooler output)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(model, XferBertForSequenceClassification):
        return model.features(**inputs)
    return model.bert(**inputs, return_dict=True).pooler_output
