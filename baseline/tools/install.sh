#!/usr/bin/env bash
# Installs megabert into the current Python environment.
#   bash tools/install.sh          runtime only
#   bash tools/install.sh test     with the test extras
# A torch that is already installed (a user's CUDA build) is kept; with none, the CPU build 2.13.0 is taken
# so that a CPU-only machine never downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q torch==2.13.0
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
# DeepSpeed's ops are compiled just in time where they are needed; nothing is built at install time.
DS_BUILD_OPS=0 python3 -m pip install -q -e ".${extras}"
