"""Convert megabert model directories to and from the formats the ecosystem reads.

    to-hf        megabert model dir -> Hugging Face dir (config.json, model.safetensors, tokenizer files).
                 MosaicBERT switches (ALiBi, GeGLU) and any mix of switches: a self-contained export carrying its
                 model code (model_type "megabert"; load with trust_remote_code=True), weights in the published
                 MosaicBERT key layout. Plain BERT switches (learned positions, GELU MLP): transformers' own
                 BertForMaskedLM / BertForSequenceClassification. --sentence-transformers adds modules.json and a
                 pooling config (mean, or --pooling cls) for SentenceTransformer(export, trust_remote_code=True).
    from-hf      Hugging Face BertForMaskedLM (or BertModel) dir, or a megabert export -> megabert model dir.
    from-mosaic  MosaicBERT checkpoint dir (pytorch_model.bin or model.safetensors + config.json) -> megabert.

    python tools/convert_checkpoint.py to-hf runs/base/model exported/ --sentence-transformers
    python tools/convert_checkpoint.py from-mosaic ~/mosaic-bert-base megabert-mosaic --vocab-file vocab.txt
    python tools/convert_checkpoint.py from-hf ~/bert-base-uncased megabert-bert

    merge-tp     tensor-parallel (TP = N) checkpoint -> one model dir (TP = 1), exact.
    split-tp     model dir -> N tensor-parallel shards, exact.

    python tools/convert_checkpoint.py merge-tp CKPT_OR_SHARDED_DIR MODEL_DIR [--model-config RUN_CONFIG.json]
    python tools/convert_checkpoint.py split-tp MODEL_DIR SHARDED_DIR --tp 4

A megabert model dir is what megabert.model.pretrained.save_pretrained writes, with its tokenizer attached
(megabert.model.pretrained.attach_tokenizer); tools/run_glue.py fine-tunes it directly. The conversions live in
megabert.hf (docs/EXPORT.md); this file is their command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional


from megabert.hf.importers import ConversionError



# ---------------------------------------------------------------------------------------------------------------
# to-hf, from-hf, from-mosaic
# ---------------------------------------------------------------------------------------------------------------


def to_hf(args: argparse.Namespace) -> int:
    from megabert.hf.export import export_model_dir

    result = export_model_dir(args.source, args.output, sentence_transformers=args.sentence_transformers,
                              pooling=args.pooling, pytorch_bin=args.pytorch_bin, max_length=args.max_length,
                              alibi_starting_size=args.alibi_starting_size)
    how = ("self-contained megabert export: load with trust_remote_code=True" if result.layout == "megabert"
           else "Hugging Face BERT layout")
    print(f"wrote {result.directory} ({how}, {result.architecture}, {result.tensors} tensors"
          f"{', sentence-transformers ' + args.pooling + ' pooling' if args.sentence_transformers else ''})")
    return 0


def _tokenizer_args(args: argparse.Namespace) -> dict:
    return {"vocab_file": args.vocab_file, "tokenizer_json": args.tokenizer_json, "cased": args.cased}


def from_hf(args: argparse.Namespace) -> int:
    from megabert.hf.importers import import_hf

    out = import_hf(args.source, args.output, **_tokenizer_args(args))
    print(f"wrote {out} (megabert model dir from {args.source})")
    return 0


def from_mosaic(args: argparse.Namespace) -> int:
    from megabert.hf.importers import import_mosaic

    out = import_mosaic(args.source, args.output, **_tokenizer_args(args))
    print(f"wrote {out} (megabert model dir from {args.source})")
    return 0


def _tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-file", help="WordPiece vocab.txt to attach (default: the source dir's)")
    parser.add_argument("--cased", action="store_true", help="the vocab is cased")
    parser.add_argument("--tokenizer-json", help="Hugging Face tokenizer.json to attach (default: the source dir's)")


def register_interop_commands(subparsers) -> None:
    p = subparsers.add_parser("to-hf", help="megabert model dir -> Hugging Face dir (transformers, "
                                            "sentence-transformers)")
    p.add_argument("source", help="megabert model dir (a training checkpoint must be exported first)")
    p.add_argument("output", help="directory to write")
    p.add_argument("--sentence-transformers", action="store_true",
                   help="also write modules.json and a pooling config for sentence-transformers")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                   help="sentence-transformers pooling: mean over real tokens (default) or the [CLS] token")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokenizer model_max_length and sentence-transformers max_seq_length (default: the "
                        "position table for plain BERT, else --alibi-starting-size; ALiBi runs longer inputs too)")
    p.add_argument("--pytorch-bin", action="store_true",
                   help="also write pytorch_model.bin (the published MosaicBERT checkpoints' file name)")
    p.add_argument("--alibi-starting-size", type=int, default=512,
                   help="config alibi_starting_size, MosaicBERT's name for the pretraining length (informational)")
    p.set_defaults(run=to_hf)
    p = subparsers.add_parser("from-hf", help="Hugging Face BertForMaskedLM dir or megabert export -> "
                                              "megabert model dir")
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
    from megabert.checkpoint.tensor_parallel import merge_checkpoint

    out = merge_checkpoint(args.source, args.output, _model_config_arg(args.model_config), args.strict,
                           fp32_master=not args.module_weights)
    print(f"merged {args.source} -> {out}")
    return 0


def _split_tp(args: argparse.Namespace) -> int:
    from megabert.checkpoint.tensor_parallel import split_checkpoint

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
