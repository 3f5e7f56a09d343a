"""Run a check function under the Triton interpreter (TRITON_INTERPRET=1) in a fresh process.

The variable must be set before Triton is imported, and setting it in this process would turn every later
Triton launch in the test session -- the GPU tests included -- into interpreted CPU code. So each interpreted
check runs as `python -c "from <module> import <fn>; <fn>(**kwargs)"` in a subprocess, from the repo root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(module: str, function: str, timeout: float = 300.0, **kwargs) -> None:
    """Calls module.function(**kwargs) (JSON-able kwargs) under TRITON_INTERPRET=1; fails with its output."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="")
    code = f"import json; from {module} import {function}; {function}(**json.loads({json.dumps(json.dumps(kwargs))}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"interpreted check {function}({kwargs}) failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
