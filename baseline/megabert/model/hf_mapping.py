"""State-dict mapping between megabert and Hugging Face transformers' BertForMaskedLM.

Valid for the plain-BERT configuration (learned positions, GELU MLP); with the MosaicBERT switches on the
weights have no BERT counterpart (see tools/convert_checkpoint.py for the MosaicBERT key layout).
HF keeps q, k and v separate; megabert fuses them into one qkv projection with rows [q | k | v].
"""

from __future__ import annotations

import torch

from megabert.config import ModelConfig

_EMBEDDINGS = {
    "bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
    "head.transform.weight": "cls.predictions.transform.dense.weight",
    "head.transform.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.decoder_bias": "cls.predictions.bias",
}

_LAYER = {  # ours (relative to bert.encoder.layers.N.) -> HF (relative to bert.encoder.layer.N.)
    "attention.out.{}": "attention.output.dense.{}",
    "attention_norm.{}": "attention.output.LayerNorm.{}",
    "mlp.wi.{}": "intermediate.dense.{}",
    "mlp.wo.{}": "output.dense.{}",
    "mlp_norm.{}": "output.LayerNorm.{}",
}


def _check_plain_bert(cfg: ModelConfig) -> None:
    if cfg.position_embedding != "learned" or cfg.mlp_type != "gelu":
        raise ValueError("the Hugging Face BERT layout needs model.position_embedding='learned' and "
                         "model.mlp_type='gelu'")


def hf_bert_to_megabert(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF BertForMaskedLM state dict -> MosaicBertForMaskedLM state dict."""
    _check_plain_bert(cfg)
    out = {ours: hf_state[theirs] for ours, theirs in _EMBEDDINGS.items()}
    for i in range(cfg.num_layers):
        ours, theirs = f"bert.encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[ours + f"attention.qkv.{kind}"] = torch.cat(
                [hf_state[theirs + f"attention.self.{name}.{kind}"] for name in ("query", "key", "value")])
            for o, t in _LAYER.items():
                out[ours + o.format(kind)] = hf_state[theirs + t.format(kind)]
    return out


def megabert_to_hf_bert(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """MosaicBertForMaskedLM state dict -> HF BertForMaskedLM state dict (decoder weight tied to embeddings)."""
    _check_plain_bert(cfg)
    out = {theirs: state[ours] for ours, theirs in _EMBEDDINGS.items()}
    out["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    out["cls.predictions.decoder.bias"] = state["head.decoder_bias"]
    for i in range(cfg.num_layers):
        ours, theirs = f"bert.encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[ours + f"attention.qkv.{kind}"].chunk(3)
            for name, tensor in zip(("query", "key", "value"), (q, k, v)):
                out[theirs + f"attention.self.{name}.{kind}"] = tensor
            for o, t in _LAYER.items():
                out[theirs + t.format(kind)] = state[ours + o.format(kind)]
    return out
