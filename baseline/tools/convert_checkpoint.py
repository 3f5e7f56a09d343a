#!/usr/bin/env python3
"""Convert megabert model directories to and from the formats the ecosystem reads.

    to-hf        megabert model dir -> Hugging Face dir (config.json, model.safetensors, tokenizer files).
                 Plain BERT switches (learned positions, GELU MLP): loads in transformers' BertForMaskedLM.
                 MosaicBERT switches (ALiBi, GeGLU): the key layout of the published mosaicml/mosaic-bert-base
                 checkpoints (add --pytorch-bin for their pytorch_model.bin file name).
    from-hf      Hugging Face BertForMaskedLM (or BertModel) dir -> megabert model dir.
    from-mosaic  MosaicBERT checkpoint dir (pytorch_model.bin or model.safetensors + config.json) -> megabert.

    python tools/convert_checkpoint.py to-hf runs/base/model exported/
    python tools/convert_checkpoint.py from-mosaic ~/mosaic-bert-base megabert-mosaic --vocab-file vocab.txt
    python tools/convert_checkpoint.py from-hf ~/bert-base-uncased megabert-bert

    merge-tp     tensor-parallel (TP = N) checkpoint -> one model dir (TP = 1), exact.
    split-tp     model dir -> N tensor-parallel shards, exact.

    python tools/convert_checkpoint.py merge-tp CKPT_OR_SHARDED_DIR MODEL_DIR [--model-config RUN_CONFIG.json]
    python tools/convert_checkpoint.py split-tp MODEL_DIR SHARDED_DIR --tp 4

A megabert model dir is what megabert.model.pretrained.save_pretrained writes, with its tokenizer attached
(megabert.model.pretrained.attach_tokenizer); tools/run_glue.py fine-tunes it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from megabert.config import ModelConfig  # noqa: E402
from megabert.model import mosaic_mapping  # noqa: E402
from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification  # noqa: E402
from megabert.model.hf_mapping import hf_bert_to_megabert, megabert_to_hf_bert  # noqa: E402
from megabert.model.pretrained import load_model_config, load_state_dict, save_pretrained  # noqa: E402
from megabert.model.pretrained import WORDPIECE_TYPES, attach_tokenizer  # noqa: E402
from megabert.tasks.tokenizer import resolve_tokenizer  # noqa: E402

log = logging.getLogger("convert_checkpoint")

SAFETENSORS_NAME = "model.safetensors"
PAD_LOGIT_BIAS = -1.0e4
"""Decoder bias of vocabulary rows added to reach a multiple of 64: those tokens are never predicted."""


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------------------------------------------


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin (loaded with weights_only: no code runs)."""
    if (directory / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / SAFETENSORS_NAME))
    if (directory / mosaic_mapping.WEIGHTS_NAME).is_file():
        state = torch.load(directory / mosaic_mapping.WEIGHTS_NAME, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise ConversionError(f"{directory} has neither {SAFETENSORS_NAME} nor {mosaic_mapping.WEIGHTS_NAME}")


def write_weights(state: dict[str, torch.Tensor], directory: Path, pytorch_bin: bool) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # safetensors refuses tensors that share memory; tied weights are written as separate copies.
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if tensor.data_ptr() in seen:
            tensors[key] = tensor.clone()
        seen.add(tensors[key].data_ptr())
    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    if pytorch_bin:
        torch.save(tensors, directory / mosaic_mapping.WEIGHTS_NAME)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def pad_vocab(state: dict[str, torch.Tensor], vocab_size: int, keys: dict[str, str]) -> tuple[dict, int]:
    """Pads the vocabulary to a multiple of 64 (megabert's requirement): zero embedding rows, and a decoder bias
    of PAD_LOGIT_BIAS so the extra tokens are never predicted."""
    padded = -(-vocab_size // 64) * 64
    if padded == vocab_size:
        return state, vocab_size
    state = dict(state)
    extra = padded - vocab_size
    emb = state[keys["embedding"]]
    state[keys["embedding"]] = torch.cat([emb, emb.new_zeros(extra, emb.shape[1])])
    if keys.get("bias") in state:
        bias = state[keys["bias"]]
        state[keys["bias"]] = torch.cat([bias, bias.new_full((extra,), PAD_LOGIT_BIAS)])
    log.info("padded the vocabulary from %d to %d rows (a multiple of 64)", vocab_size, padded)
    return state, padded


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer files
# ---------------------------------------------------------------------------------------------------------------


def export_tokenizer(model_dir: Path, out: Path, max_length: int) -> None:
    """vocab.txt + tokenizer.json + tokenizer_config.json + special_tokens_map.json for transformers."""
    entry = resolve_tokenizer(model_dir)
    if entry is None:
        log.warning("%s records no tokenizer: the export has no tokenizer files", model_dir)
        return
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    if entry["tokenizer_type"] in WORDPIECE_TYPES:
        from tokenizers import BertWordPieceTokenizer

        lowercase = WORDPIECE_TYPES[entry["tokenizer_type"]]
        shutil.copyfile(entry["vocab_file"], out / "vocab.txt")
        BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=lowercase).save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": max_length,
                  **specials}
    elif entry["tokenizer_type"] == "HuggingFaceTokenizer":
        shutil.copyfile(entry["tokenizer_model"], out / "tokenizer.json")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **specials}
    else:
        shutil.copyfile(entry["tokenizer_model"], out / "tokenizer.model")
        log.warning("SentencePiece tokenizer copied as tokenizer.model; write its tokenizer_config.json for "
                    "transformers yourself (the special-token layout is model specific)")
        return
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def import_tokenizer(source: Path, out: Path, args: argparse.Namespace) -> None:
    """Flags first, then the source dir's vocab.txt / tokenizer.json (do_lower_case from tokenizer_config.json)."""
    lower = not args.cased
    tokenizer_config = source / "tokenizer_config.json"
    if not args.cased and tokenizer_config.is_file():
        lower = bool(json.loads(tokenizer_config.read_text()).get("do_lower_case", True))
    kind = "BertWordPieceLowerCase" if lower else "BertWordPieceCase"
    if args.vocab_file:
        attach_tokenizer(out, kind, vocab_file=args.vocab_file)
    elif args.tokenizer_json:
        attach_tokenizer(out, "HuggingFaceTokenizer", tokenizer_model=args.tokenizer_json)
    elif (source / "vocab.txt").is_file():
        attach_tokenizer(out, kind, vocab_file=str(source / "vocab.txt"))
    elif (source / "tokenizer.json").is_file():
        attach_tokenizer(out, "HuggingFaceTokenizer", tokenizer_model=str(source / "tokenizer.json"))
    else:
        log.warning("no tokenizer found in %s: pass --vocab-file (MosaicBERT uses bert-base-uncased's vocab.txt) "
                    "or give tools/run_glue.py --vocab-file later", source)


# ---------------------------------------------------------------------------------------------------------------
# to-hf
# ---------------------------------------------------------------------------------------------------------------


def hf_bert_config(cfg: ModelConfig, architecture: str, extra: Optional[dict] = None) -> dict:
    """transformers BertConfig fields for a plain-BERT megabert model."""
    return {
        "architectures": [architecture], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu", "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout, "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute", "tie_word_embeddings": True, **(extra or {}),
    }


def _classification_extra(model_dir: Path) -> dict:
    task = read_json(model_dir / "config.json").get("task") or {}
    labels = task.get("labels") or []
    extra = {"num_labels": 1 if task.get("regression") else len(labels)}
    if labels:
        extra["id2label"] = {str(i): str(label) for i, label in enumerate(labels)}
        extra["label2id"] = {str(label): i for i, label in enumerate(labels)}
    if task.get("regression"):
        extra["problem_type"] = "regression"
    return extra


def to_hf(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.output)
    cfg = load_model_config(source)
    state = load_state_dict(source)
    head = mosaic_mapping.detect_head(state)
    plain = cfg.position_embedding == "learned" and cfg.mlp_type == "gelu"
    mosaic = cfg.position_embedding == "alibi" and cfg.mlp_type == "geglu"
    if not (plain or mosaic):
        raise ConversionError(
            f"{source} mixes switches (position_embedding={cfg.position_embedding!r}, mlp_type={cfg.mlp_type!r}): "
            f"no published layout holds it. Export needs learned+gelu (Hugging Face BERT) or alibi+geglu "
            f"(MosaicBERT); keep the megabert format for ablation models")
    extra = _classification_extra(source) if head == "classifier" else {}
    architecture = "BertForMaskedLM" if head == "mlm" else "BertForSequenceClassification"
    if mosaic:
        hf_state = mosaic_mapping.megabert_to_mosaic(state, cfg)
        config = mosaic_mapping.mosaic_config(cfg, max(512, args.alibi_starting_size),
                                              {"architectures": [architecture], **extra})
    else:
        hf_state = _megabert_to_hf(state, cfg, head)
        config = hf_bert_config(cfg, architecture, extra)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(hf_state, out, args.pytorch_bin)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    export_tokenizer(source, out, max_length=config["max_position_embeddings"] if plain else args.alibi_starting_size)
    print(f"wrote {out} ({'MosaicBERT' if mosaic else 'Hugging Face BERT'} layout, {architecture}, "
          f"{len(hf_state)} tensors)")
    return 0


def _megabert_to_hf(state: dict, cfg: ModelConfig, head: str) -> dict:
    if head == "mlm":
        hf_state = megabert_to_hf_bert(state, cfg)
        # transformers ties decoder.weight to the embeddings and decoder.bias to cls.predictions.bias.
        for tied in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            hf_state.pop(tied)
        return hf_state
    # The HF mapping covers the MLM model; give it a placeholder head, then swap in pooler and classifier.
    placeholder = {"head.transform.weight": state["pooler.weight"], "head.transform.bias": state["pooler.bias"],
                   "head.norm.weight": state["pooler.bias"], "head.norm.bias": state["pooler.bias"],
                   "head.decoder_bias": state["bert.embeddings.word_embeddings.weight"][:, 0]}
    hf_state = {k: v for k, v in megabert_to_hf_bert({**state, **placeholder}, cfg).items()
                if not k.startswith("cls.")}
    hf_state.update({"bert.pooler.dense.weight": state["pooler.weight"], "bert.pooler.dense.bias": state["pooler.bias"],
                     "classifier.weight": state["classifier.weight"], "classifier.bias": state["classifier.bias"]})
    return hf_state


# ---------------------------------------------------------------------------------------------------------------
# from-hf, from-mosaic
# ---------------------------------------------------------------------------------------------------------------


def _normalise_hf_keys(state: dict) -> dict:
    """Old BERT checkpoints say LayerNorm.gamma/beta; BertModel files lack the 'bert.' prefix."""
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        out[key] = value
    return out


def _fresh_mlm_head(cfg: ModelConfig) -> dict:
    """A newly initialised MLM head in HF names, for checkpoints saved without one (BertModel)."""
    fresh = MosaicBertForMaskedLM(cfg).state_dict()
    return {"cls.predictions.transform.dense.weight": fresh["head.transform.weight"],
            "cls.predictions.transform.dense.bias": fresh["head.transform.bias"],
            "cls.predictions.transform.LayerNorm.weight": fresh["head.norm.weight"],
            "cls.predictions.transform.LayerNorm.bias": fresh["head.norm.bias"],
            "cls.predictions.bias": fresh["head.decoder_bias"]}


def from_hf(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.output)
    config = read_json(source / "config.json")
    if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{source}: only absolute positions and exact gelu map onto megabert's plain BERT")
    if "alibi_starting_size" in config:
        raise ConversionError(f"{source} is a MosaicBERT checkpoint: use from-mosaic")
    state = _normalise_hf_keys(read_weights(source))
    if any(".attention.self.Wqkv." in k for k in state):
        raise ConversionError(f"{source} has MosaicBERT weights (Wqkv): use from-mosaic")
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    state, vocab_size = pad_vocab(state, config["vocab_size"], {"embedding": "bert.embeddings.word_embeddings.weight",
                                                                "bias": "cls.predictions.bias"})
    cfg = ModelConfig(
        vocab_size=vocab_size, hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
        type_vocab_size=config.get("type_vocab_size", 2),
        max_position_embeddings=config.get("max_position_embeddings", 512),
        hidden_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12), initializer_range=config.get("initializer_range", 0.02),
        pad_token_id=config.get("pad_token_id") or 0, position_embedding="learned", mlp_type="gelu")
    if "cls.predictions.transform.dense.weight" not in state:
        log.warning("%s has no MLM head (a BertModel checkpoint): a fresh head is initialised", source)
        state.update(_fresh_mlm_head(cfg))
    megabert_state = hf_bert_to_megabert(state, cfg)
    _save_megabert(MosaicBertForMaskedLM(cfg), megabert_state, cfg, out, source, args, "huggingface-bert")
    return 0


def from_mosaic(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.output)
    config = read_json(source / "config.json")
    state = mosaic_mapping.strip_prefix(read_weights(source))
    head = mosaic_mapping.detect_head(state)
    state, vocab_size = pad_vocab(state, config.get("vocab_size", 30522),
                                  {"embedding": "bert.embeddings.word_embeddings.weight",
                                   "bias": "cls.predictions.decoder.bias"})
    state.pop(mosaic_mapping.DECODER_WEIGHT, None)  # tied to the (possibly padded) embeddings
    cfg = mosaic_mapping.config_from_mosaic(config, vocab_size=vocab_size)
    megabert_state = mosaic_mapping.mosaic_to_megabert(state, cfg)
    if head == "mlm":
        model = MosaicBertForMaskedLM(cfg)
    else:
        num_labels = state["classifier.weight"].shape[0]
        model = MosaicBertForSequenceClassification(cfg, num_labels)
    _save_megabert(model, megabert_state, cfg, out, source, args, "mosaicbert")
    return 0


def _save_megabert(model: torch.nn.Module, state: dict, cfg: ModelConfig, out: Path, source: Path,
                   args: argparse.Namespace, origin: str) -> None:
    """Loads strictly (every tensor accounted for), then writes a megabert model dir with its tokenizer."""
    model.load_state_dict(state, strict=True)
    save_pretrained(model, out, cfg, extra={"converted_from": {"format": origin, "path": str(source)}})
    import_tokenizer(source, out, args)
    print(f"wrote {out} (megabert model dir from {origin} checkpoint {source})")


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-file", help="WordPiece vocab.txt to attach (default: the source dir's)")
    parser.add_argument("--cased", action="store_true", help="the vocab is cased")
    parser.add_argument("--tokenizer-json", help="Hugging Face tokenizer.json to attach (default: the source dir's)")


def register_interop_commands(subparsers) -> None:
    p = subparsers.add_parser("to-hf", help="megabert model dir -> Hugging Face / MosaicBERT dir")
    p.add_argument("source", help="megabert model dir")
    p.add_argument("output", help="directory to write")
    p.add_argument("--pytorch-bin", action="store_true",
                   help="also write pytorch_model.bin (the published MosaicBERT checkpoints' file name)")
    p.add_argument("--alibi-starting-size", type=int, default=512,
                   help="MosaicBERT config alibi_starting_size (their code grows it on demand)")
    p.set_defaults(run=to_hf)
    p = subparsers.add_parser("from-hf", help="Hugging Face BertForMaskedLM dir -> megabert model dir")
    p.add_argument("source")
    p.add_argument("output")
    _tokenizer_flags(p)
    p.set_defaults(run=from_hf)
    p = subparsers.add_parser("from-mosaic", help="MosaicBERT checkpoint dir -> megabert model dir")
    p.add_argument("source")
    p.add_argument("output")
    _tokenizer_flags(p)
    p.set_defaults(run=from_mosaic)


# ----------------------------------------------------------------------------------------------------------------
# Tensor-parallel subcommands: merge-tp, split-tp
# ----------------------------------------------------------------------------------------------------------------


def add_tensor_parallel_commands(commands) -> None:
    merge = commands.add_parser(
        "merge-tp", help="merge a tensor-parallel (TP = N) checkpoint into one model directory (TP = 1)",
        description="Reads a sharded megabert model directory (config.json + model-tpXX-of-NN.safetensors) or a "
                    "DeepSpeed checkpoint tag directory (mp_rank_XX_model_states.pt) and writes config.json + "
                    "model.safetensors. Exact: shards are concatenated, never recomputed.")
    merge.add_argument("source", help="sharded model directory, DeepSpeed checkpoint tag directory, "
                                                      "or a trainer checkpoint step_N/ (holding one tag directory)")
    merge.add_argument("output", help="model directory to write")
    merge.add_argument("--model-config", help="JSON with a 'model' section (needed when the source has no config.json, "
                                              "e.g. a DeepSpeed tag: pass the run's resolved config)")
    merge.add_argument("--strict", action="store_true",
                       help="fail (instead of warn) when a replicated tensor differs between TP ranks")
    merge.add_argument("--module-weights", action="store_true",
                       help="DeepSpeed input: take the module weights as saved (bf16 in a bf16 run) instead of the "
                            "fp32 master weights consolidated from the ZeRO optimizer files")
    merge.set_defaults(run=_merge_tp)

    split = commands.add_parser(
        "split-tp", help="split a model directory (TP = 1) into N tensor-parallel shards",
        description="Writes config.json (with tensor_parallel_size) and one model-tpXX-of-NN.safetensors per rank.")
    split.add_argument("source", help="model directory (config.json + model.safetensors)")
    split.add_argument("output", help="sharded model directory to write")
    split.add_argument("--tp", type=int, required=True, help="tensor-parallel size")
    split.add_argument("--model-config", help="JSON with a 'model' section, if the source has no config.json")
    split.set_defaults(run=_split_tp)


def _model_config_arg(path: str | None):
    if path is None:
        return None
    import json

    from megabert.config import ModelConfig, from_dict

    return from_dict(ModelConfig, json.loads(Path(path).read_text())["model"], "model.")


def _merge_tp(args: argparse.Namespace) -> int:
    from megabert.parallel.tp_checkpoint import merge_checkpoint

    out = merge_checkpoint(args.source, args.output, _model_config_arg(args.model_config), args.strict,
                           fp32_master=not args.module_weights)
    print(f"merged {args.source} -> {out}")
    return 0


def _split_tp(args: argparse.Namespace) -> int:
    from megabert.parallel.tp_checkpoint import split_checkpoint

    out = split_checkpoint(args.source, args.output, args.tp, _model_config_arg(args.model_config))
    print(f"split {args.source} into {args.tp} tensor-parallel shards -> {out}")
    return 0


# Each entry adds a group of subcommands to the parser and sets `run` on each.
SUBCOMMANDS: list[Callable] = [register_interop_commands, add_tensor_parallel_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ConversionError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
