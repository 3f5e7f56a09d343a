"""Test launcher: pretrain_bert.py's main, on the synthetic data stand-in, optionally over several configs.

    python tests/train/run_synthetic.py --config c.json [--sweep parallel.zero_stage=1,2,3] [--real-data] [overrides]

With --sweep, the same processes train once per value (output_dir and checkpoint.dir get a /<value> suffix), so one
launch (one DeepSpeed start) covers several cases. Each run's summary is printed as a JSON line on rank 0.
--real-data trains on the config's data_path through megabert.data instead of the synthetic stand-in.
MEGABERT_TEST_KILL_AT_PUBLISH=N makes rank 0 SIGKILL itself while publishing the checkpoint of step N, after the
engine state is on disk but before the rename (the worst moment for a crash; with async saves, on the writer thread).
MEGABERT_TEST_WRITE_DELAY=R:S,... makes rank R's background checkpoint writer start S seconds late (training goes on).
MEGABERT_TEST_SIGTERM_AT_STEP=N makes every rank send itself SIGTERM right after step N (as SLURM would).
MEGABERT_TEST_NAN=R:S,... makes rank R's loss NaN during step S (every micro-batch of it).
MEGABERT_TEST_DISK_FULL_AT=N makes every write of the checkpoint of step N fail as a full disk does (ENOSPC).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megabert.config import apply_overrides, load_config, replace  # noqa: E402
from tests.train import synthetic_data  # noqa: E402


def main(argv: list[str]) -> None:
    import pretrain_bert
    from megabert.checkpoint import manager as checkpoint
    from megabert.checkpoint.writer import BackgroundWriter
    from megabert.train.step import TrainStep
    from megabert.train.trainer import Trainer

    sweep, builder = None, synthetic_data.build
    if "--real-data" in argv:
        argv.remove("--real-data")
        builder = None
    if "--sweep" in argv:
        i = argv.index("--sweep")
        sweep = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    config_path, overrides = pretrain_bert.parse_args(argv)
    kill_step = int(os.environ.get("MEGABERT_TEST_KILL_AT_PUBLISH", "-1"))
    if kill_step >= 0:
        publish = checkpoint.CheckpointManager._publish

        def publish_then_die(self, job):
            if job.final.name == checkpoint.step_dir_name(kill_step):
                os.kill(os.getpid(), signal.SIGKILL)
            publish(self, job)

        checkpoint.CheckpointManager._publish = publish_then_die

    delays = {int(rank): float(seconds) for rank, seconds in
              (item.split(":") for item in os.environ.get("MEGABERT_TEST_WRITE_DELAY", "").split(",") if item)}
    if delays:
        write = BackgroundWriter._run

        def write_late(self, job):
            time.sleep(delays.get(self.rank, 0.0))
            write(self, job)

        BackgroundWriter._run = write_late

    full_step = int(os.environ.get("MEGABERT_TEST_DISK_FULL_AT", "-1"))
    if full_step >= 0:
        import errno

        from megabert.checkpoint import durable

        torch_save = durable.torch.save

        class TorchOnAFullDisk:
            """durable's view of torch: save() fails for the files of step `full_step`."""

            def __getattr__(self, name):
                return getattr(sys.modules["torch"], name)

            @staticmethod
            def save(obj, path, *args, **kwargs):
                if checkpoint.step_dir_name(full_step) in str(path):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return torch_save(obj, path, *args, **kwargs)

        durable.torch = TorchOnAFullDisk()

    term_step = int(os.environ.get("MEGABERT_TEST_SIGTERM_AT_STEP", "-1"))
    if term_step >= 0:
        train_step = TrainStep.__call__

        def train_step_then_signal(self, step, *args):
            if step == term_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return train_step(self, step, *args)

        TrainStep.__call__ = train_step_then_signal

    nan_at = {tuple(int(x) for x in item.split(":")) for item in os.environ.get("MEGABERT_TEST_NAN", "").split(",")
              if item}
    if nan_at:
        from megabert.model.bert import MosaicBertForMaskedLM

        where = {}
        train_step_before_nan = TrainStep.__call__

        def train_step_noting_step(self, step, *args):
            where.update(rank=int(os.environ.get("RANK", "0")), step=step)
            return train_step_before_nan(self, step, *args)

        forward = MosaicBertForMaskedLM.forward

        def forward_with_nan(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.training and (where.get("rank"), where.get("step")) in nan_at:
                out.loss = out.loss * float("nan")
            return out

        TrainStep.__call__ = train_step_noting_step
        MosaicBertForMaskedLM.forward = forward_with_nan

    base = load_config(config_path, overrides)
    runs = [(None, base)]
    if sweep:
        key, values = sweep.split("=", 1)
        runs = []
        for value in values.split(","):
            cfg = replace(base)
            apply_overrides(cfg, [(key, value), ("output_dir", f"{base.output_dir}/{value}"),
                                  ("checkpoint.dir", f"{base.checkpoint.dir}/{value}")])
            runs.append((value, cfg))
    for value, cfg in runs:
        summary = Trainer(cfg, data_builder=builder).train()
        if int(os.environ.get("RANK", "0")) == 0:
            print("SUMMARY " + json.dumps({"sweep": value, **summary}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
