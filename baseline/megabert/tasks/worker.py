"""Runs one fine-tuning job from its JSON file: `python -m megabert.tasks.worker <job.json>`.

The runner starts one of these per GPU with CUDA_VISIBLE_DEVICES set, so the job sees a single device.
"""

from __future__ import annotations

import json
import logging
import sys

from megabert.tasks.finetune import Job, run_job


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m megabert.tasks.worker JOB_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with open(argv[0]) as f:
        job = Job(**json.load(f))
    run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
