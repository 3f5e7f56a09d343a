"""The user commands run as `python tools/<name>.py` from a checkout and install as console scripts."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = (REPO / "setup.py").read_text()
DECLARED = dict(re.findall(r'"(megabert-[\w-]+) = ([\w.]+:\w+)"', SETUP))
COMMANDS = sorted(p.stem for p in (REPO / "megabert" / "cli").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_runs_from_tools_and_is_a_console_script(name):
    assert f"megabert-{name.replace('_', '-')}" in DECLARED, f"megabert/cli/{name}.py has no console script"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_the_installed_console_scripts_load_their_commands():
    installed = {ep.name: ep for ep in metadata.entry_points(group="console_scripts") if ep.name in DECLARED}
    if not installed:
        pytest.skip("megabert is not installed (pip install -e .)")
    assert set(installed) == set(DECLARED)
    for name, ep in installed.items():
        assert ep.value == DECLARED[name] and callable(ep.load()), name
