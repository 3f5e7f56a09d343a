"""The user commands, one module each (entry points: the top layer). Each runs as `python tools/<name>.py` from a
checkout and, installed, as the console script `megabert-<name>` (setup.py)."""
