"""State-dict and config mapping between megabert and the published MosaicBERT checkpoints.

The layout is that of mosaicml/examples' `bert_layers.py` (the `mosaicml/mosaic-bert-base*` checkpoints,
`pytorch_model.bin` + a transformers-style `config.json`):

    bert.embeddings.{word_embeddings,token_type_embeddings}.weight, bert.embeddings.LayerNorm.{weight,bias}
    bert.encoder.layer.N.attention.self.Wqkv.{weight,bias}           fused [q | k | v] rows, as ours
    bert.encoder.layer.N.attention.output.dense.{weight,bias}
    bert.encoder.layer.N.attention.output.LayerNorm.{weight,bias}
    bert.encoder.layer.N.mlp.gated_layers.weight                     no bias; gate rows first, as our GeGLU wi
    bert.encoder.layer.N.mlp.wo.{weight,bias}
    bert.encoder.layer.N.mlp.layernorm.{weight,bias}
    cls.predictions.transform.dense.{weight,bias}, cls.predictions.transform.LayerNorm.{weight,bias}
    cls.predictions.decoder.{weight,bias}                            weight tied to the word embeddings
    (sequence classification: bert.pooler.dense.{weight,bias}, classifier.{weight,bias})

No position embeddings (ALiBi with the same slopes as megabert) and exact GELU, so a megabert model with
position_embedding 'alibi' and mlp_type 'geglu' maps weight for weight.
"""

from __future__ import annotations

import torch

from megabert.config import ModelConfig

_TOP = {  # ours -> theirs
    "bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
}
_MLM_HEAD = {
    "head.transform.weight": "cls.predictions.transform.dense.weight",
    "head.transform.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.decoder_bias": "cls.predictions.decoder.bias",
}
_CLASSIFIER_HEAD = {
    "pooler.weight": "bert.pooler.dense.weight",
    "pooler.bias": "bert.pooler.dense.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
_LAYER = {  # ours (after bert.encoder.layers.N.) -> theirs (after bert.encoder.layer.N.)
    "attention.qkv.weight": "attention.self.Wqkv.weight",
    "attention.qkv.bias": "attention.self.Wqkv.bias",
    "attention.out.weight": "attention.output.dense.weight",
    "attention.out.bias": "attention.output.dense.bias",
    "attention_norm.weight": "attention.output.LayerNorm.weight",
    "attention_norm.bias": "attention.output.LayerNorm.bias",
    "mlp.wi.weight": "mlp.gated_layers.weight",
    "mlp.wo.weight": "mlp.wo.weight",
    "mlp.wo.bias": "mlp.wo.bias",
    "mlp_norm.weight": "mlp.layernorm.weight",
    "mlp_norm.bias": "mlp.layernorm.bias",
}
DECODER_WEIGHT = "cls.predictions.decoder.weight"
WEIGHTS_NAME = "pytorch_model.bin"
"""The file name of the published checkpoints' weights."""


def check_mosaic_architecture(cfg: ModelConfig) -> None:
    if cfg.position_embedding != "alibi" or cfg.mlp_type != "geglu":
        raise ValueError(f"the MosaicBERT layout needs model.position_embedding='alibi' and model.mlp_type='geglu' "
                         f"(this model has {cfg.position_embedding!r} and {cfg.mlp_type!r})")


def key_map(cfg: ModelConfig, head: str) -> dict[str, str]:
    """ours -> theirs for every tensor; head is 'mlm' or 'classifier'."""
    if head not in ("mlm", "classifier"):
        raise ValueError(f"head must be 'mlm' or 'classifier', got {head!r}")
    mapping = dict(_TOP)
    for i in range(cfg.num_layers):
        for ours, theirs in _LAYER.items():
            mapping[f"bert.encoder.layers.{i}.{ours}"] = f"bert.encoder.layer.{i}.{theirs}"
    mapping.update(_MLM_HEAD if head == "mlm" else _CLASSIFIER_HEAD)
    return mapping


def detect_head(state: dict) -> str:
    """'mlm' or 'classifier', from the keys of either layout."""
    if "head.decoder_bias" in state or "cls.predictions.decoder.bias" in state:
        return "mlm"
    if "classifier.weight" in state:
        return "classifier"
    raise ValueError("the state dict has neither an MLM head (cls.predictions.*) nor a classifier (classifier.*)")


def megabert_to_mosaic(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """megabert state dict -> MosaicBERT layout; the MLM decoder weight is written out (a copy of the embeddings),
    as in the published files."""
    check_mosaic_architecture(cfg)
    head = detect_head(state)
    out = {theirs: state[ours] for ours, theirs in key_map(cfg, head).items()}
    if head == "mlm":
        out[DECODER_WEIGHT] = state["bert.embeddings.word_embeddings.weight"].clone()
    return out


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Composer checkpoints wrap the model: 'model.bert.embeddings...' -> 'bert.embeddings...'."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def mosaic_to_megabert(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """MosaicBERT layout -> megabert state dict; names every missing tensor and refuses unknown ones."""
    check_mosaic_architecture(cfg)
    state = strip_prefix(state)
    head = detect_head(state)
    mapping = key_map(cfg, head)
    missing = [theirs for theirs in mapping.values() if theirs not in state]
    if missing:
        raise KeyError(f"MosaicBERT checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}; does config.json "
                       f"(num_hidden_layers={cfg.num_layers}) match the weights?")
    known = set(mapping.values()) | {DECODER_WEIGHT}
    unexpected = [k for k in state if k not in known and not k.startswith("bert.pooler.")]
    if unexpected:
        raise KeyError(f"MosaicBERT checkpoint has tensors megabert does not know: {unexpected[:5]}")
    return {ours: state[theirs] for ours, theirs in mapping.items()}


def mosaic_config(cfg: ModelConfig, alibi_starting_size: int = 512, extra: dict | None = None) -> dict:
    """config.json fields of MosaicBERT's BertConfig (a transformers BertConfig plus alibi_starting_size)."""
    check_mosaic_architecture(cfg)
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "alibi_starting_size": alibi_starting_size,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.hidden_dropout,
        "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": cfg.type_vocab_size,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
        **(extra or {}),
    }


def config_from_mosaic(config: dict, **overrides) -> ModelConfig:
    """ModelConfig from a MosaicBERT config.json (fields missing there take BertConfig's defaults)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (MosaicBERT uses exact 'gelu')")
    fields = dict(
        vocab_size=config.get("vocab_size", 30522),
        hidden_size=config.get("hidden_size", 768),
        num_layers=config.get("num_hidden_layers", 12),
        num_heads=config.get("num_attention_heads", 12),
        intermediate_size=config.get("intermediate_size", 3072),
        type_vocab_size=config.get("type_vocab_size", 2),
        max_position_embeddings=max(config.get("max_position_embeddings", 512), config.get("alibi_starting_size", 0)),
        hidden_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.0),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        initializer_range=config.get("initializer_range", 0.02),
        pad_token_id=config.get("pad_token_id") or 0,
        position_embedding="alibi",
        mlp_type="geglu",
    )
    fields.update(overrides)
    return ModelConfig(**fields)
