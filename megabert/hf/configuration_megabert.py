"""Configuration of a megabert encoder for Hugging Face transformers (AutoConfig with trust_remote_code=True).

This file is copied into every model directory megabert exports, beside modeling_megabert.py; it imports only
transformers. Field names follow transformers' BertConfig (and the published MosaicBERT configs, which add
`alibi_starting_size`), so tools written for BERT read them; two fields say which of megabert's architecture
switches the weights were trained with:

    position_embedding_type  "alibi" (MosaicBERT: a per-head linear bias on attention scores, no position table)
                             or "absolute" (BERT's learned position embeddings)
    mlp_type                 "geglu" (MosaicBERT: gated GELU, no input bias) or "gelu" (BERT's MLP)

The model_type "megabert" is one transformers does not know, so loading without trust_remote_code=True stops
with transformers' own message instead of building a BERT with newly initialised weights.
"""

from transformers import PretrainedConfig

POSITION_EMBEDDING_TYPES = ("alibi", "absolute")
MLP_TYPES = ("geglu", "gelu")


class MegaBertConfig(PretrainedConfig):
    model_type = "megabert"

    def __init__(
        self,
        vocab_size=30528,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        position_embedding_type="alibi",
        mlp_type="geglu",
        alibi_starting_size=512,
        classifier_dropout=None,
        **kwargs,
    ):
        if position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                             f"got {position_embedding_type!r}")
        if mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {mlp_type!r}")
        if hidden_act != "gelu":
            raise ValueError(f"hidden_act must be 'gelu' (exact GELU, as megabert trains), got {hidden_act!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                             f"({num_attention_heads})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings  # the learned table's size ("absolute" only)
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.mlp_type = mlp_type
        # MosaicBERT's name for the length ALiBi models were pretrained at; informational, longer inputs work.
        self.alibi_starting_size = alibi_starting_size
        self.classifier_dropout = classifier_dropout  # before a classification head; None: hidden_dropout_prob
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
