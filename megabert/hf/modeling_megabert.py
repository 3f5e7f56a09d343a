"""MegaBERT, the encoder megabert pretrains (MosaicBERT and its ablations), for Hugging Face transformers.

This file is copied into every model directory megabert exports, beside configuration_megabert.py. It needs torch
and transformers only (flash-attn is used when it imports); megabert itself need not be installed. Load it with
trust_remote_code=True through AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification or
AutoModelForTokenClassification.

What it computes, as megabert does:
    input_ids [B, S] + attention_mask -> the real tokens only: [T] with cu_seqlens [B + 1] -> embeddings (word +
    token type [+ learned position], LayerNorm, dropout) [T, H] -> N post-LN layers (fused QKV projection,
    attention with ALiBi, add & norm, GeGLU or GELU MLP, add & norm) -> padded back to [B, S, H] (zeros on padding).
Attention runs on the unpadded tokens through flash-attn's varlen kernel with alibi_slopes when flash_attn imports
and the tensors are fp16/bf16 on CUDA; otherwise through PyTorch's scaled_dot_product_attention with an additive
ALiBi + padding bias, the batch re-padded to its longest sequence. attn_implementation "sdpa" and "eager" leave that
choice as it is; "flash_attention_2" requires flash-attn. Linear layers and heads never see padding. ALiBi
has no position table, so inputs longer than the pretraining length work (the bias extrapolates).
Weight names are those of the published MosaicBERT checkpoints (bert.encoder.layer.N.attention.self.Wqkv, ...).
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_megabert import MegaBertConfig

try:  # transformers 5: initialisers that leave the weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4 calls _init_weights only on the modules a checkpoint lacks
    from torch.nn import init

try:  # optional: the fused varlen attention kernel with ALiBi
    from flash_attn import flash_attn_varlen_qkvpacked_func
except Exception:  # not installed, or built for another torch/CUDA: PyTorch's attention runs instead
    flash_attn_varlen_qkvpacked_func = None


def alibi_slopes(num_heads: int) -> list:
    """Per-head ALiBi slopes (Press et al., 2022): 2^(-8/n), 2^(-16/n), ... for a power of two n; otherwise the
    slopes of the closest smaller power of two followed by every other slope of the next one."""

    def geometric(n: int) -> list:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return geometric(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return geometric(closest) + geometric(2 * closest)[0::2][: num_heads - closest]


class TokenLayout:
    """Where the real tokens of a padded batch [B, S] are. Hidden states travel as [T, H] (T real tokens, in
    row order); attention_bias builds the SDPA bias once per forward and every layer reuses it."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.seq_len = attention_mask.shape
        real = attention_mask.bool()  # [B, S]
        self.seqlens = real.sum(dim=1, dtype=torch.int32)  # [B]
        self.cu_seqlens = F.pad(self.seqlens.cumsum(0, dtype=torch.int32), (1, 0))  # [B + 1]
        self.max_seqlen = int(self.seqlens.max()) if self.batch else 0
        if bool(real.all()):  # no padding: [B, S] and [T] are the same rows, every gather below is a view
            self.indices = self.left_indices = None
        else:
            self.indices = real.flatten().nonzero().flatten()  # [T] rows of the [B * S] grid
            positions = torch.arange(self.max_seqlen, device=real.device)
            left = positions[None, :] < self.seqlens[:, None]  # [B, M]: sequences left-aligned, M = max_seqlen
            self.left_indices = left.flatten().nonzero().flatten()  # [T] rows of the [B * M] grid
        self._bias: dict = {}

    @property
    def padded(self) -> bool:
        return self.indices is not None

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> [T, ...]."""
        flat = x.reshape(self.batch * self.seq_len, *x.shape[2:])
        return flat if self.indices is None else flat[self.indices]

    def pad(self, tokens: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, S, ...] with zeros at padded positions."""
        return self._scatter(tokens, self.indices, self.seq_len)

    def first_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, ...]: the first real token ([CLS]) of each sequence."""
        return tokens[self.cu_seqlens[:-1].long()]

    def to_left_aligned(self, tokens: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, M, ...], each sequence from position 0, zeros after it."""
        return self._scatter(tokens, self.left_indices, self.max_seqlen)

    def from_left_aligned(self, x: torch.Tensor) -> torch.Tensor:
        """[B, M, ...] -> [T, ...]."""
        flat = x.reshape(self.batch * x.shape[1], *x.shape[2:])
        return flat if self.left_indices is None else flat[self.left_indices]

    def _scatter(self, tokens: torch.Tensor, indices: Optional[torch.Tensor], length: int) -> torch.Tensor:
        rest = tokens.shape[1:]
        if indices is None:
            return tokens.reshape(self.batch, length, *rest)
        out = tokens.new_zeros(self.batch * length, *rest).index_put((indices,), tokens)  # autograd flows to tokens
        return out.view(self.batch, length, *rest)

    def attention_bias(self, slopes: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Additive SDPA bias on the left-aligned batch: -slope_h * |i - j| (ALiBi) plus the most negative value
        of `dtype` on padded keys; [1 or B, heads or 1, M, M], or None when there is nothing to add."""
        if dtype not in self._bias:
            length, device = self.max_seqlen, self.cu_seqlens.device
            bias = None
            if slopes is not None:
                positions = torch.arange(length, device=device)
                distance = (positions[None, :] - positions[:, None]).abs().float()  # [M, M]
                bias = (-slopes.float()[:, None, None] * distance)[None]  # [1, heads, M, M]
            if self.padded:
                lowest = torch.finfo(dtype).min
                keys = torch.arange(length, device=device)[None, :] < self.seqlens[:, None]  # [B, M]
                keys_bias = torch.zeros(self.batch, 1, 1, length, device=device)  # [B, 1, 1, M]
                keys_bias = keys_bias.masked_fill(~keys[:, None, None, :], lowest)
                bias = keys_bias if bias is None else (bias + keys_bias).clamp(min=lowest)  # [B, heads, M, M]
            self._bias[dtype] = None if bias is None else bias.to(dtype)
        return self._bias[dtype]


def _flash_attn_runs(qkv: torch.Tensor, head_dim: int) -> bool:
    return (flash_attn_varlen_qkvpacked_func is not None and qkv.is_cuda
            and qkv.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------


class MegaBertEmbeddings(nn.Module):
    """Word + token type (+ learned position, 'absolute' only) embeddings of the real tokens, LayerNorm, dropout."""

    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.position_embedding_type == "absolute" else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Optional[torch.Tensor], token_type_ids: torch.Tensor,
                position_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor]) -> torch.Tensor:
        """Ids [T] (or inputs_embeds [T, H]) -> [T, H]."""
        hidden = inputs_embeds if inputs_embeds is not None else self.word_embeddings(input_ids)
        hidden = hidden + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(hidden))


class MegaBertSelfAttention(nn.Module):
    """Fused QKV projection (output rows [q | k | v], each [heads, head_dim]) and bidirectional attention."""

    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def _flash(self, qkv: torch.Tensor) -> bool:
        """flash-attn whenever it can run; attn_implementation="flash_attention_2" makes that a requirement."""
        runs = _flash_attn_runs(qkv, self.head_dim)
        if not runs and getattr(self.config, "_attn_implementation", None) == "flash_attention_2":
            raise ValueError(f"attn_implementation='flash_attention_2' needs the flash_attn package and fp16/bf16 "
                             f"tensors on a CUDA device (got {qkv.dtype} on {qkv.device.type}, flash_attn "
                             f"{'imported' if flash_attn_varlen_qkvpacked_func else 'not importable'}); leave "
                             f"attn_implementation unset to run PyTorch's attention where flash-attn cannot")
        return runs

    def forward(self, hidden: torch.Tensor, layout: TokenLayout, slopes: Optional[torch.Tensor]) -> torch.Tensor:
        qkv = self.Wqkv(hidden).view(-1, 3, self.num_heads, self.head_dim)  # [T, 3, heads, head_dim]
        dropout_p = self.dropout_p if self.training else 0.0
        if self._flash(qkv):
            context = flash_attn_varlen_qkvpacked_func(qkv, layout.cu_seqlens, layout.max_seqlen, dropout_p,
                                                       causal=False, alibi_slopes=slopes)  # [T, heads, head_dim]
        else:
            padded = layout.to_left_aligned(qkv)  # [B, M, 3, heads, head_dim]
            q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, M, head_dim]
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.attention_bias(slopes, q.dtype),
                                                     dropout_p=dropout_p)  # [B, heads, M, head_dim]
            context = layout.from_left_aligned(context.transpose(1, 2))  # [T, heads, head_dim]
        return context.reshape(-1, self.num_heads * self.head_dim)  # [T, H]


class MegaBertAttentionOutput(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class MegaBertAttention(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.self = MegaBertSelfAttention(config)
        self.output = MegaBertAttentionOutput(config)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout, slopes: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(hidden, layout, slopes), hidden)


class MegaBertMLP(nn.Module):
    """GeGLU: wo(gelu(gate) * value), [gate | value] = gated_layers(x) (no bias); or BERT's wo(gelu(wi(x)));
    then add & norm."""

    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.gated = config.mlp_type == "geglu"
        if self.gated:
            self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        else:
            self.wi = nn.Linear(config.hidden_size, config.intermediate_size)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, value = self.gated_layers(hidden).chunk(2, dim=-1)  # each [T, intermediate]
            inner = F.gelu(gate) * value
        else:
            inner = F.gelu(self.wi(hidden))
        return self.layernorm(self.dropout(self.wo(inner)) + hidden)


class MegaBertLayer(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.attention = MegaBertAttention(config)
        self.mlp = MegaBertMLP(config)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout, slopes: Optional[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.attention(hidden, layout, slopes))


class MegaBertEncoder(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MegaBertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False  # set by PreTrainedModel.gradient_checkpointing_enable

    def forward(self, hidden: torch.Tensor, layout: TokenLayout, slopes: Optional[torch.Tensor],
                keep_all: bool) -> tuple:
        """[T, H] -> ([T, H], the input of every layer and the last output when keep_all)."""
        all_hidden = [hidden] if keep_all else []
        for layer in self.layer:
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(layer.__call__, hidden, layout, slopes)
            else:
                hidden = layer(hidden, layout, slopes)
            if keep_all:
                all_hidden.append(hidden)
        return hidden, all_hidden


class MegaBertPooler(nn.Module):
    """dense + tanh on the [CLS] token, as BERT (used by sequence classification)."""

    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


class MegaBertPreTrainedModel(PreTrainedModel):
    config_class = MegaBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MegaBertEmbeddings", "MegaBertLayer"]
    # The attention is this file's own (flash-attn when it can run, else SDPA with the ALiBi bias), whatever
    # attn_implementation says; the flags let transformers accept the usual values ("flash_attention_2": required).
    _supports_sdpa = True
    _supports_flash_attn = True  # transformers 5
    _supports_flash_attn_2 = True  # transformers 4

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, as megabert's: N(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _return_dict(model: PreTrainedModel, return_dict: Optional[bool]) -> bool:
    return return_dict if return_dict is not None else model.config.return_dict


class MegaBertModel(MegaBertPreTrainedModel):
    """The encoder: last_hidden_state [B, S, H] (zeros at padded positions), pooler_output [B, H] when built with
    a pooler (sequence classification), hidden_states (embeddings, then each layer) on request."""

    # Loaded alone (AutoModel, sentence-transformers), the encoder leaves the checkpoint's head unused by design.
    _keys_to_ignore_on_load_unexpected = [r"^cls\.", r"^classifier\.", r"^(bert\.)?pooler\."]

    def __init__(self, config: MegaBertConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = MegaBertEmbeddings(config)
        self.encoder = MegaBertEncoder(config)
        self.pooler = MegaBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if output_attentions:
            raise ValueError("MegaBERT does not return attention probabilities (attention runs in fused kernels "
                             "that never materialise them); leave output_attentions off")
        keep_all = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        batch, seq = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        if position_ids is None and self.embeddings.position_embeddings is not None:
            position_ids = torch.arange(seq, device=device).expand(batch, seq)
        layout = TokenLayout(attention_mask)
        unpad = lambda x: layout.unpad(x) if x is not None else None  # noqa: E731  [B, S, ...] -> [T, ...]
        hidden = self.embeddings(unpad(input_ids), unpad(token_type_ids), unpad(position_ids),
                                 unpad(inputs_embeds))  # [T, H]
        slopes = None
        if self.config.position_embedding_type == "alibi":
            slopes = torch.tensor(alibi_slopes(self.config.num_attention_heads), dtype=torch.float32, device=device)
        hidden, all_hidden = self.encoder(hidden, layout, slopes, bool(keep_all))  # [T, H]
        sequence_output = layout.pad(hidden)  # [B, S, H]
        pooled = self.pooler(layout.first_tokens(hidden)) if self.pooler is not None else None  # [B, H]
        hidden_states = tuple(layout.pad(h) for h in all_hidden) if keep_all else None
        if not _return_dict(self, return_dict):
            return tuple(v for v in (sequence_output, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled,
                                          hidden_states=hidden_states)


class MegaBertPredictionTransform(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class MegaBertLMPrediction(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> decoder (weight tied to the word embeddings)."""

    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.transform = MegaBertPredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class MegaBertMLMHead(nn.Module):
    def __init__(self, config: MegaBertConfig):
        super().__init__()
        self.predictions = MegaBertLMPrediction(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


def _on_real_tokens(head: nn.Module, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """head applied to the real tokens of hidden [B, S, H] only; [B, S, out] with zeros at padded positions."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return head(hidden)
    real = attention_mask.bool()  # [B, S]
    rows = head(hidden[real])  # [T, out]
    return rows.new_zeros(*real.shape, rows.shape[-1]).index_put((real,), rows)


class MegaBertForMaskedLM(MegaBertPreTrainedModel):
    """logits [B, S, V] (zeros at padded positions: the head runs on real tokens only); loss: mean cross entropy
    over the positions whose label is not -100."""

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: MegaBertConfig):
        super().__init__(config)
        self.bert = MegaBertModel(config)
        self.cls = MegaBertMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, return_dict=True)
        logits = _on_real_tokens(self.cls, outputs.last_hidden_state, attention_mask)  # [B, S, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        if not _return_dict(self, return_dict):
            output = tuple(v for v in (logits, outputs.hidden_states) if v is not None)
            return (loss, *output) if loss is not None else output
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def _classifier_dropout(config: MegaBertConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _head_output(model, return_dict, output_class, loss, logits, hidden_states):
    """A head's result as transformers returns it: the output class, or with return_dict False a tuple (loss first
    when there is one)."""
    if not _return_dict(model, return_dict):
        output = tuple(v for v in (logits, hidden_states) if v is not None)
        return (loss, *output) if loss is not None else output
    return output_class(loss=loss, logits=logits, hidden_states=hidden_states)


class MegaBertForSequenceClassification(MegaBertPreTrainedModel):
    """[CLS] -> pooler (dense + tanh) -> dropout -> classifier, as megabert's fine-tuned classifiers. The loss
    follows config.problem_type as transformers' models do (num_labels 1: regression, MSE)."""

    def __init__(self, config: MegaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MegaBertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))  # [B, num_labels]
        loss = self._loss(logits, labels.to(logits.device)) if labels is not None else None
        return _head_output(self, return_dict, SequenceClassifierOutput, loss, logits, outputs.hidden_states)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float())
            return F.mse_loss(logits.float(), labels.float())
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1).long())
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class MegaBertForTokenClassification(MegaBertPreTrainedModel):
    """Each token's hidden state -> dropout -> classifier: logits [B, S, num_labels]; loss: cross entropy over the
    labels that are not -100."""

    def __init__(self, config: MegaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MegaBertModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # [B, S, num_labels]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        return _head_output(self, return_dict, TokenClassifierOutput, loss, logits, outputs.hidden_states)
