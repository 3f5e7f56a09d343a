"""Reading C4-style JSON lines (plain or gzip, files or globs) with per-reason accounting of bad input."""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from typing import Iterator

SKIP_REASONS = ("malformed_json", "missing_key", "empty_text", "non_utf8", "truncated_gzip")


class InputError(ValueError):
    """Bad input met with --on-error fail; the message names the file, the line and the reason."""


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files and globs -> sorted, de-duplicated file list; a pattern matching nothing is an error."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise InputError(f"input {pattern!r} matches no file")
        files += [m for m in matches if m not in files]
    return files


def open_binary(path: str):
    """Raw bytes of a JSON-lines file; gzip detected by its magic number, not its name."""
    with open(path, "rb") as f:
        magic = f.read(2)
    raw = open(path, "rb")
    if magic == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def read_lines(path: str, chunk_lines: int = 1024) -> Iterator[tuple[list[bytes], int, str | None]]:
    """Yields (lines, compressed bytes read so far, error) chunks; a truncated/corrupt gzip ends the file with
    error 'truncated_gzip' after the lines decoded before the damage (all but at most a few KB)."""
    raw, stream = open_binary(path)
    reader = stream  # GzipFile buffers small blocks itself, so little is lost before a damaged spot
    try:
        chunk: list[bytes] = []
        while True:
            try:
                line = reader.readline()
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
                yield chunk, raw.tell(), "truncated_gzip"
                return
            if not line:
                break
            chunk.append(line)
            if len(chunk) >= chunk_lines:
                yield chunk, raw.tell(), None
                chunk = []
        yield chunk, raw.tell(), None
    finally:
        raw.close()
