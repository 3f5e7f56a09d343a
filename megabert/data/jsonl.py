"""Reading C4-style JSON lines (plain or gzip, files or globs) with per-reason accounting of bad input.

``read_lines`` yields the raw lines of a file in chunks; ``parse_record`` turns one line into its texts or the
reason it is skipped (one of SKIP_REASONS, shared by every tool that reads a corpus).

Lines are read bounded: a line longer than ``max_line_bytes`` is never held in memory whole. It is read past in
pieces of at most that size and handed on as an ``OversizeLine`` placeholder, so that it is counted as a skip
and line numbers stay right, while one 50 MB line costs no more memory than the cap.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from typing import Iterator, Optional

SKIP_REASONS = ("malformed_json", "missing_key", "empty_text", "non_utf8", "truncated_gzip", "oversize_line",
                "oversize_document")

MAX_LINE_BYTES = 32 << 20
"""Default cap on one JSON line (bytes, newline excluded). Far above any real web or encyclopedia page:
Common Crawl (C4's source) truncates a fetched page at 1 MiB and Wikipedia caps an article's wikitext at
2 MiB; even a 4 Mi-character document JSON-escaped as \\uXXXX (6 bytes per character) fits."""

MAX_DOCUMENT_CHARS = 4 << 20
"""Default cap on one text (characters, per JSON key), checked before tokenizing: tokenizing costs ~160 bytes of
memory per character (a 4 Mi-character text peaks near 0.6 GB in one process). Twice the largest Wikipedia
article (its wikitext is capped at 2 MiB) and above the longest novels; C4's pages are below 1 MiB."""

CHUNK_BYTES = 8 << 20
"""A chunk of lines ends once it holds this many bytes, however few lines it has, so the chunks in flight
between the reader and the tokenizer processes stay bounded when lines are long."""


class InputError(ValueError):
    """Bad input met with --on-error fail; the message names the file, the line and the reason."""


class OversizeLine(bytes):
    """Stands in for a line over the cap: empty bytes (so any JSON parse fails) that remember the line's size
    and the cap it broke."""

    nbytes: int
    limit: int

    def __new__(cls, nbytes: int, limit: int) -> "OversizeLine":
        line = super().__new__(cls, b"")
        line.nbytes, line.limit = nbytes, limit
        return line

    def __reduce__(self):  # workers receive placeholders through pickle
        return OversizeLine, (self.nbytes, self.limit)


_NOT_JSON_LINES = " (the input must be JSON lines, one object per line: a JSON array is not read)"


def parse_record(raw: bytes, keys: list[str], max_document_chars: int = MAX_DOCUMENT_CHARS) -> \
        tuple[Optional[str], str, list[str]]:
    """(skip reason or None, detail, the text of each key) of one JSON line; reason "blank" for an empty line
    (ignored, not counted). A line is used only if every key holds a non-empty string within the cap."""
    if isinstance(raw, OversizeLine):
        return "oversize_line", f"the line holds {raw.nbytes:,} bytes, over the cap of {raw.limit:,} " \
                                f"(--max-line-bytes)", []
    if not raw.strip():
        return "blank", "", []
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return "non_utf8", str(err), []
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return "malformed_json", str(err) + _NOT_JSON_LINES * line.lstrip().startswith("["), []
    if not isinstance(obj, dict):
        hint = _NOT_JSON_LINES if isinstance(obj, list) else ""
        return "malformed_json", f"a JSON {type(obj).__name__}, not an object{hint}", []
    fields = []
    for key in keys:
        value = obj.get(key)
        if not isinstance(value, str):
            what = "missing" if key not in obj else f"a {type(value).__name__}, not a string"
            return "missing_key", f"key {key!r} is {what}", []
        if not value.strip():
            return "empty_text", f"key {key!r} is empty", []
        if len(value) > max_document_chars:
            return ("oversize_document", f"key {key!r} holds {len(value):,} characters, over the cap of "
                    f"{max_document_chars:,} (--max-document-chars)", [])
        fields.append(value)
    return None, "", fields


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


def read_bounded_line(reader, max_line_bytes: int) -> bytes:
    """The next line (b"" at the end), or an ``OversizeLine`` when it holds more than ``max_line_bytes`` bytes
    before its newline; the rest of such a line is read past in pieces of at most that size."""
    line = reader.readline(max_line_bytes + 1)
    if len(line) <= max_line_bytes or line.endswith(b"\n"):
        return line
    size = len(line)
    del line  # never hold more than one piece
    while True:
        piece = reader.readline(max_line_bytes + 1)
        size += len(piece)
        if not piece or piece.endswith(b"\n"):
            return OversizeLine(size - 1 if piece.endswith(b"\n") else size, max_line_bytes)


def read_lines(path: str, chunk_lines: int = 1024, max_line_bytes: int = MAX_LINE_BYTES,
               chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[list[bytes], int, str | None]]:
    """Yields (lines, compressed bytes read so far, error) chunks of at most ``chunk_lines`` lines (fewer once a
    chunk holds ``chunk_bytes``); a line over ``max_line_bytes`` comes as an ``OversizeLine``. A truncated or
    corrupt gzip ends the file with error 'truncated_gzip' after the lines decoded before the damage (all but
    at most a few KB)."""
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
    raw, stream = open_binary(path)
    reader = stream  # GzipFile buffers small blocks itself, so little is lost before a damaged spot
    try:
        chunk: list[bytes] = []
        held = 0
        while True:
            try:
                line = read_bounded_line(reader, max_line_bytes)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
                yield chunk, raw.tell(), "truncated_gzip"
                return
            if not line and not isinstance(line, OversizeLine):
                break
            chunk.append(line)
            held += len(line)
            if len(chunk) >= chunk_lines or held >= chunk_bytes:
                yield chunk, raw.tell(), None
                chunk, held = [], 0
        yield chunk, raw.tell(), None
    finally:
        raw.close()
