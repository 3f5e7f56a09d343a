"""How long does a checkpoint stop training, and how long does its background write take? The trainer's own engine
and CheckpointManager, after a few training steps (so the optimizer state exists), saving alternately with and
without torch.save's zip CRC32 (`checkpoint.zip_crc32`), each save waited for until it is published.

    python -m benchmarks.checkpoint --config configs/base.json --global_batch_size 1024      # one GPU
    python -m benchmarks.checkpoint --config configs/tiny.json --parallel.device cpu --rounds 1

Extra `--section.key value` arguments override the config; the bundled sample corpus is preprocessed first when
the config's data is missing. Prints, per setting, the median over --rounds of the
time training stopped (the snapshot into pinned host memory) and of the time until the checkpoint was published.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

from benchmarks.trainer import benchmark_trainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--rounds", type=int, default=3, help="saves per setting (default 3)")
    parser.add_argument("--train-steps", type=int, default=2, help="optimizer steps before the first save")
    args, overrides = parser.parse_known_args(argv)

    out = "runs/bench_checkpoint"
    trainer = benchmark_trainer(args.config, [
        ("output_dir", out), ("checkpoint.dir", f"{out}/checkpoints"), ("checkpoint.resume", "none"),
        ("checkpoint.keep_last", "1"), ("checkpoint.async_save", "true"), ("schedule.total_steps", "100")], overrides)
    with contextlib.closing(trainer.train_batches()) as batches:
        for step in range(1, args.train_steps + 1):
            trainer.step(step, batches)
    pinning = trainer.checkpoints.prepare(trainer.engine)

    times: dict[bool, dict[str, list[float]]] = {crc: {"stop": [], "published": []} for crc in (True, False)}
    step = 1000
    for _ in range(args.rounds):
        for crc in (True, False):
            trainer.checkpoints.cfg.zip_crc32 = crc
            step += 1
            start = time.perf_counter()
            trainer.checkpoints.save(trainer.engine, step, {"step": step, "consumed_samples": 0}, {})
            times[crc]["stop"].append(time.perf_counter() - start)
            trainer.checkpoints.wait()
            times[crc]["published"].append(time.perf_counter() - start)
    trainer.checkpoints.close()

    result = {"config": args.config, "pinning_seconds": pinning, "rounds": args.rounds,
              **{f"crc32_{'on' if crc else 'off'}": {k: statistics.median(v) for k, v in t.items()} | {"all": t}
                 for crc, t in times.items()}}
    if trainer.rank == 0:
        print(f"\npinned host buffers once: {pinning:.2f} s")
        print(f"{'zip CRC32':12}{'training stopped s':>20}{'published after s':>20}   (medians of {args.rounds})")
        for crc in (True, False):
            row = result[f"crc32_{'on' if crc else 'off'}"]
            print(f"{'on' if crc else 'off':12}{row['stop']:>20.3f}{row['published']:>20.2f}")
        print("BENCH_CHECKPOINT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
