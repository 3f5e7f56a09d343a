#!/usr/bin/env python3
"""Pretrain a MosaicBERT encoder.

    python pretrain_bert.py --config configs/tiny.json [--section.key value ...]
    deepspeed pretrain_bert.py --config configs/large.json                  # all GPUs of a node
    torchrun --nproc_per_node 8 pretrain_bert.py --config configs/large.json
    srun python pretrain_bert.py --config ...       mpirun -np 16 python pretrain_bert.py --config ...

Every field of the config can be overridden, e.g. --optim.lr 3e-4 --checkpoint.resume auto.
`python pretrain_bert.py --help` lists them with their documentation.
"""

from __future__ import annotations

import sys

from megabert.config import ConfigError, describe_fields, load_config


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """(config path, overrides). Drops --local_rank, which the deepspeed launcher appends (ranks come from env)."""
    config, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            config, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            config, i = arg.split("=", 1)[1], i + 1
        elif arg.startswith(("--local_rank", "--local-rank")):
            i += 1 if "=" in arg else 2
        else:
            rest.append(arg)
            i += 1
    if config is None:
        raise ConfigError("missing --config FILE (e.g. --config configs/tiny.json)")
    return config, rest


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, default, doc in describe_fields():
            print(f"  --{name} (default {default})\n      {doc}")
        return {}
    config_path, overrides = parse_args(argv)
    cfg = load_config(config_path, overrides)
    from megabert.train.trainer import Trainer  # torch and deepspeed load only once the config is valid
    from megabert.utils.distributed import shutdown_distributed

    summary = Trainer(cfg).train()
    shutdown_distributed()  # a clean exit: no "destroy_process_group() was not called" from NCCL
    return summary


def console_main() -> int:
    """`python pretrain_bert.py` and the console script `megabert-pretrain`: a config error is one line, exit 2."""
    try:
        main()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(console_main())
