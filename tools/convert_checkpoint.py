#!/usr/bin/env python
"""Convert megabert checkpoints.

    python tools/convert_checkpoint.py merge-tp --input CKPT --output MODEL_DIR
    python tools/convert_checkpoint.py split-tp --input MODEL_DIR --output SHARDED_DIR --tp 4

Each conversion is a subcommand; each group of subcommands registers itself in its own `add_*_commands`
function below, and `main` only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_tensor_parallel_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------------------
# Tensor-parallel subcommands: merge-tp, split-tp
# ----------------------------------------------------------------------------------------------------------------


def add_tensor_parallel_commands(commands) -> None:
    merge = commands.add_parser(
        "merge-tp", help="merge a tensor-parallel (TP = N) checkpoint into one model directory (TP = 1)",
        description="Reads a sharded megabert model directory (config.json + model-tpXX-of-NN.safetensors) or a "
                    "DeepSpeed checkpoint tag directory (mp_rank_XX_model_states.pt) and writes config.json + "
                    "model.safetensors. Exact: shards are concatenated, never recomputed.")
    merge.add_argument("--input", required=True, help="sharded model directory, DeepSpeed checkpoint tag directory, "
                                                      "or a trainer checkpoint step_N/ (holding one tag directory)")
    merge.add_argument("--output", required=True, help="model directory to write")
    merge.add_argument("--model-config", help="JSON with a 'model' section (needed when --input has no config.json, "
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
    split.add_argument("--input", required=True, help="model directory (config.json + model.safetensors)")
    split.add_argument("--output", required=True, help="sharded model directory to write")
    split.add_argument("--tp", type=int, required=True, help="tensor-parallel size")
    split.add_argument("--model-config", help="JSON with a 'model' section, if --input has no config.json")
    split.set_defaults(run=_split_tp)


def _model_config_arg(path: str | None):
    if path is None:
        return None
    import json

    from megabert.config import ModelConfig, from_dict

    return from_dict(ModelConfig, json.loads(Path(path).read_text())["model"], "model.")


def _merge_tp(args: argparse.Namespace) -> int:
    from megabert.parallel.tp_checkpoint import merge_checkpoint

    out = merge_checkpoint(args.input, args.output, _model_config_arg(args.model_config), args.strict,
                           fp32_master=not args.module_weights)
    print(f"merged {args.input} -> {out}")
    return 0


def _split_tp(args: argparse.Namespace) -> int:
    from megabert.parallel.tp_checkpoint import split_checkpoint

    out = split_checkpoint(args.input, args.output, args.tp, _model_config_arg(args.model_config))
    print(f"split {args.input} into {args.tp} tensor-parallel shards -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
