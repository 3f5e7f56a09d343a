"""MosaicBERT: the encoder and its masked-LM and sequence-classification models (single device).

Data flow (unpadded, the default):
    input_ids [B, S] --unpad ids--> [T] --embeddings--> [T, H] --N layers (varlen attention)--> [T, H]
    MLM: rows of masked tokens [M, H] -> transform -> tied decoder -> logits [M, V] -> loss over masked tokens.
    Classification: [CLS] rows [B, H] -> pooler -> classifier.
With model.unpad off the same modules run on [B, S, H] with an attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from megabert.config import ModelConfig
from megabert.model.embeddings import Embeddings
from megabert.model.encoder import Encoder
from megabert.model.layernorm import LayerNorm
from megabert.model.layout import TokenLayout
from megabert.model.pretrained import PretrainedMixin
from megabert.ops.linear_cross_entropy import linear_cross_entropy
from megabert.ops.padding import Unpadded, unpad_info

IGNORE_INDEX = -100
MLM_OUTPUTS = ("logits", "loss", "predictions")
"""What MosaicBertForMaskedLM.forward returns beside the loss (its `mlm_output` argument):
  logits       the logits ([M, V] masked rows with the sparse head and labels, else [B, S, V]) -- the default
  loss         no logits: the head's decoder and cross entropy run fused, one chunk of rows at a time, so the
               [M, V] logits never exist (training)
  predictions  the same fused loss plus each labelled row's argmax (`predictions`, int64): accuracy without logits
               (evaluation)
Where the loss is not the plain cross entropy (tensor parallelism swaps `loss_fn`), "loss" and "predictions" fall
back to computing the logits, and return them."""


def init_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: N(0, std) weights, zero biases, unit LayerNorm, zero padding embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MosaicBertModel(PretrainedMixin, nn.Module):
    """The encoder. Returns hidden states and the layout they are in ([T, H] unpadded or [B, S, H])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None,
                unpadded: Optional[Unpadded] = None) -> tuple[torch.Tensor, TokenLayout]:
        """`unpadded`: the unpadding bookkeeping precomputed on the CPU (megabert.model.inputs.prepare_inputs);
        computed here from attention_mask when absent (which synchronises a GPU once)."""
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.cfg.unpad:
            info = unpadded if unpadded is not None else unpad_info(attention_mask)
            flat = lambda x: x.reshape(-1)[info.indices]  # [B, S] -> [T]
            positions = info.indices % seq if self.embeddings.position_embeddings is not None else None
            hidden = self.embeddings(flat(input_ids), flat(token_type_ids), positions)  # [T, H]
            layout = TokenLayout(attention_mask, info)
        else:
            positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
            hidden = self.embeddings(input_ids, token_type_ids, positions)  # [B, S, H]
            layout = TokenLayout(attention_mask)
        return self.encoder(hidden, layout), layout


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings (+ bias)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.low_precision_layernorm)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """decoder_weight is the word-embedding matrix [V, H], passed in so the tie holds by construction."""
        return F.linear(self.transform_rows(hidden), decoder_weight, self.decoder_bias)

    def transform_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """dense -> GELU -> LayerNorm: the rows the decoder multiplies."""
        return self.norm(F.gelu(self.transform(hidden)))

    def fused_loss(self, hidden: torch.Tensor, decoder_weight: torch.Tensor, labels: torch.Tensor,
                   predictions: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Mean cross entropy of forward(hidden) against labels [N] (fp32) without the [N, V] logits, and each row's
        argmax when `predictions` (megabert.ops.linear_cross_entropy)."""
        return linear_cross_entropy(self.transform_rows(hidden), decoder_weight, self.decoder_bias, labels,
                                    IGNORE_INDEX, predictions)


@dataclass
class MaskedLMOutput:
    loss: Optional[torch.Tensor]
    """Mean cross entropy over masked tokens (None without labels)."""
    logits: Optional[torch.Tensor]
    """[M, V] for the masked tokens (sparse head with labels), else [B, S, V]; None for mlm_output 'loss' and
    'predictions'."""
    labels: Optional[torch.Tensor]
    """Labels aligned with logits' (or predictions') leading dims."""
    predictions: Optional[torch.Tensor] = None
    """Argmax over the vocabulary per labelled row (mlm_output 'predictions'), aligned with labels."""


class MosaicBertForMaskedLM(PretrainedMixin, nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = MosaicBertModel(cfg)
        self.head = MLMHead(cfg)
        # The loss is an attribute so the tensor-parallel step can swap in a vocab-parallel cross entropy.
        self.loss_fn = masked_lm_loss
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                unpadded: Optional[Unpadded] = None,
                masked_token_index: Optional[torch.Tensor] = None, mlm_output: str = "logits") -> MaskedLMOutput:
        """masked_token_index: rows of the encoder output that carry a label (precomputed on the CPU by
        prepare_inputs); found here with a device-synchronising nonzero when absent. mlm_output: see MLM_OUTPUTS
        ('loss' for training, 'predictions' for evaluation need labels)."""
        if mlm_output not in MLM_OUTPUTS:
            raise ValueError(f"mlm_output must be one of {MLM_OUTPUTS}, got {mlm_output!r}")
        if mlm_output != "logits" and labels is None:
            raise ValueError(f"mlm_output={mlm_output!r} computes the loss and needs labels; use 'logits' without")
        fused = mlm_output != "logits" and self.loss_fn is masked_lm_loss
        hidden, layout = self.bert(input_ids, attention_mask, token_type_ids, unpadded)
        decoder_weight = self.bert.embeddings.word_embeddings.weight
        if labels is not None and (self.cfg.sparse_mlm_head or fused):
            token_labels = layout.select(labels).reshape(-1)  # [T] or [B * S], aligned with hidden's rows
            rows = hidden.reshape(-1, hidden.shape[-1])  # [T or B * S, H]
            if self.cfg.sparse_mlm_head:  # the head never sees unmasked tokens
                if masked_token_index is None:
                    masked_token_index = torch.nonzero(token_labels != IGNORE_INDEX).flatten()
                rows = rows.index_select(0, masked_token_index)  # [M, H]
                token_labels = token_labels.index_select(0, masked_token_index)  # [M]
            if fused:
                loss, predictions = self.head.fused_loss(rows, decoder_weight, token_labels,
                                                         mlm_output == "predictions")
                return MaskedLMOutput(loss, None, token_labels, predictions)
            logits, labels = self.head(rows, decoder_weight), token_labels  # [M, V], [M]
        else:
            logits = layout.to_padded(self.head(hidden, decoder_weight))  # [B, S, V]
        loss = self.loss_fn(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss, logits, labels)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy (fp32) over positions whose label is not IGNORE_INDEX."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


@dataclass
class SequenceClassifierOutput:
    loss: Optional[torch.Tensor]
    logits: torch.Tensor  # [B, num_labels]


class MosaicBertForSequenceClassification(PretrainedMixin, nn.Module):
    """[CLS] -> pooler (dense + tanh) -> dropout -> classifier. num_labels == 1 is regression (MSE)."""

    def __init__(self, cfg: ModelConfig, num_labels: int, classifier_dropout: Optional[float] = None):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.cfg = cfg
        self.num_labels = num_labels
        self.bert = MosaicBertModel(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                unpadded: Optional[Unpadded] = None) -> SequenceClassifierOutput:
        hidden, layout = self.bert(input_ids, attention_mask, token_type_ids, unpadded)
        pooled = torch.tanh(self.pooler(layout.first_tokens(hidden)))  # [B, H]
        logits = self.classifier(self.dropout(pooled))  # [B, num_labels]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss, logits)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied decoder weight is counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
