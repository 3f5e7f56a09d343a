#!/usr/bin/env python
"""Tokenize C4-style JSON lines into Megatron .bin/.idx datasets (MMIDIDX v1), with worker processes.

    python tools/preprocess_data.py --input 'c4/en/c4-train.*.json.gz' --output-prefix data/c4 \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt --workers 8

writes data/c4_text_document.bin/.idx (one file pair per --json-keys key; "_sentence" instead of "_document"
with --split-sentences), the names Megatron's tools/preprocess_data.py gives. Flags follow Megatron's, so its
users' commands carry over. Output is identical for any --workers (chunks are written in input order).

Bad lines (malformed JSON, missing key or non-string value, empty text, invalid UTF-8, a line over
--max-line-bytes, a text over --max-document-chars) and truncated or corrupt gzip files are counted per reason and
skipped; ``--on-error fail`` stops at the first one instead, naming the file and line. A line is read bounded, so
an oversize one never sits in memory whole. Outputs are written under temporary names and renamed only at the
very end, so a killed or failed run never leaves a dataset that looks complete; worker processes die with the
main process, however it ends (SIGKILL included).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker; parallelism comes from --workers

import numpy as np

from megabert.data.indexed_dataset import IndexedDatasetWriter, optimal_dtype
from megabert.data.jsonl import (
    MAX_DOCUMENT_CHARS, MAX_LINE_BYTES, SKIP_REASONS, InputError, expand_inputs, parse_record, read_lines)
from megabert.data.sentences import split_sentences
from megabert.data.tokenizer import TOKENIZER_TYPES, load_tokenizer


@dataclass
class ChunkResult:
    """Tokens of the good documents of one chunk of lines, per JSON key, and what was skipped."""

    tokens: list[np.ndarray]  # per key: all tokens back to back
    sequence_lengths: list[np.ndarray]  # per key: tokens per sequence (sentence or whole document)
    sequences_per_doc: list[np.ndarray]  # per key
    documents: int = 0
    text_bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_error: Optional[tuple[int, str, str]] = None  # (line offset in chunk, reason, detail)


class ChunkEncoder:
    """Per-process state: the tokenizer and the options. Also used in-process when --workers 1."""

    def __init__(self, args: argparse.Namespace):
        self.tokenizer = load_tokenizer(args.tokenizer_type, args.vocab_file, args.tokenizer_model)
        self.keys = args.json_keys
        self.split = args.split_sentences
        self.eod = self.tokenizer.eod_id if args.append_eod else None
        self.dtype = np.dtype(optimal_dtype(self.tokenizer.vocab_size))
        self.max_document_chars = args.max_document_chars

    def encode(self, lines: list[bytes]) -> ChunkResult:
        result = ChunkResult([], [], [])
        texts: list[list[str]] = []  # per good line, per key
        for offset, raw in enumerate(lines):
            reason, detail, fields = parse_record(raw, self.keys, self.max_document_chars)
            if reason == "blank":
                continue
            if reason:
                result.skipped[reason] += 1
                if result.first_error is None:
                    result.first_error = (offset, reason, detail)
                continue
            texts.append(fields)
            result.text_bytes += len(raw)
        # Tokenize every piece (sentence or document) of every key in one batch call per key.
        keep = np.ones(len(texts), dtype=bool)
        per_key = []
        for k in range(len(self.keys)):
            pieces, counts = [], []
            for fields in texts:
                parts = split_sentences(fields[k]) if self.split else [fields[k]]
                pieces += parts
                counts.append(len(parts))
            ids = self.tokenizer.encode_batch(pieces) if pieces else []
            per_key.append((ids, counts))
            # A document whose text tokenizes to nothing (e.g. only control characters) is empty.
            pos = 0
            for d, c in enumerate(counts):
                if sum(len(x) for x in ids[pos:pos + c]) == 0:
                    keep[d] = False
                pos += c
        empty = int((~keep).sum())
        if empty:
            result.skipped["empty_text"] += empty
            if result.first_error is None:
                result.first_error = (-1, "empty_text", "text has no tokens")
        for ids, counts in per_key:
            flat, lengths, per_doc, pos = [], [], [], 0
            for d, c in enumerate(counts):
                doc = [x for x in ids[pos:pos + c] if x]  # drop sentences with no tokens
                pos += c
                if not keep[d]:
                    continue
                if self.eod is not None:
                    doc[-1] = doc[-1] + [self.eod]
                flat += doc
                lengths += [len(x) for x in doc]
                per_doc.append(len(doc))
            result.tokens.append(np.fromiter(itertools.chain.from_iterable(flat), dtype=self.dtype,
                                             count=sum(lengths)))
            result.sequence_lengths.append(np.asarray(lengths, dtype=np.int32))
            result.sequences_per_doc.append(np.asarray(per_doc, dtype=np.int64))
        result.documents = int(keep.sum())
        return result


_ENCODER: Optional[ChunkEncoder] = None

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.25


def _set_parent_death_signal() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent dies. False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    """Exits the process as soon as it is re-parented, i.e. its parent is gone."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def bind_to_parent(parent_pid: int, use_prctl: bool = True) -> None:
    """Makes this worker die with its parent, however the parent ends (SIGKILL, a crash, an OOM kill), instead of
    tokenizing on for minutes with nobody to read the result. Linux: the kernel's parent-death signal, SIGKILL
    (it fires when the thread that forked the worker ends: the main thread, or for a replacement worker the
    pool's handler thread, both alive as long as the pool). Elsewhere, or when prctl fails: a daemon thread that
    notices the re-parenting within PARENT_POLL_S."""
    if use_prctl and _set_parent_death_signal():
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _init_worker(args: argparse.Namespace, parent_pid: int) -> None:
    global _ENCODER
    bind_to_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the main process handles it and stops the pool; a worker that
    # raised KeyboardInterrupt too would only print a traceback. SIGTERM (how the pool stops workers) is
    # reset from the main process's handler to its default: end now.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _ENCODER = ChunkEncoder(args)


def _encode_in_worker(lines: list[bytes]) -> ChunkResult:
    assert _ENCODER is not None
    return _ENCODER.encode(lines)


def _jobs(files: list[str], chunk_lines: int, max_line_bytes: int, progress, state: dict):
    """(path, first line number, lines) chunks of every file in order; notes truncated gzips in ``state``."""
    for path in files:
        size = os.path.getsize(path)
        line_no, last = 1, 0
        for lines, position, error in read_lines(path, chunk_lines, max_line_bytes):
            if lines:
                yield path, line_no, lines
            line_no += len(lines)
            if progress is not None:
                progress.update(position - last)
            last = position
            if error:
                state["truncated"].append((path, line_no))
        if progress is not None:
            progress.update(size - last)


def _ordered_map(pool, jobs, window: int):
    """pool.imap with back-pressure: at most ``window`` chunks in flight (imap would read the whole input)."""
    pending: collections.deque = collections.deque()
    for path, line_no, lines in jobs:
        pending.append((path, line_no, pool.apply_async(_encode_in_worker, (lines,))))
        if len(pending) >= window:
            path, line_no, result = pending.popleft()
            yield path, line_no, result.get()
    while pending:
        path, line_no, result = pending.popleft()
        yield path, line_no, result.get()


def output_prefixes(prefix: str, keys: list[str], split_sentences: bool) -> list[str]:
    level = "sentence" if split_sentences else "document"
    return [f"{prefix}_{key}_{level}" for key in keys]


def run(args: argparse.Namespace) -> dict:
    files = expand_inputs(args.input)
    encoder = ChunkEncoder(args)  # validates the tokenizer flags before any work starts
    prefixes = output_prefixes(args.output_prefix, args.json_keys, args.split_sentences)
    total_bytes = sum(os.path.getsize(f) for f in files)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preprocess", mininterval=1.0,
                        file=sys.stderr, dynamic_ncols=True)
    state: dict = {"truncated": []}
    skipped: Counter = Counter()
    documents = tokens = text_bytes = 0
    start = time.perf_counter()
    writers = [IndexedDatasetWriter(p, encoder.dtype) for p in prefixes]
    pool = None
    try:
        jobs = _jobs(files, args.chunk_lines, args.max_line_bytes, progress, state)
        if args.workers > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            pool = ctx.Pool(args.workers, initializer=_init_worker, initargs=(args, os.getpid()))
            results = _ordered_map(pool, jobs, window=4 * args.workers)
        else:
            results = ((path, line_no, encoder.encode(lines)) for path, line_no, lines in jobs)
        reported = 0
        first_skip = None  # where and why, for the error when nothing at all was usable
        for path, first_line, result in results:
            if result.first_error:
                offset, reason, detail = result.first_error
                where = f"{path}:{first_line + offset}" if offset >= 0 else f"{path} (lines from {first_line})"
                if args.on_error == "fail":
                    raise InputError(f"{where}: {reason}: {detail} (use --on-error skip to count and continue)")
                first_skip = first_skip or f"{where}: {reason}: {detail}"
            for w, toks, lens, per_doc in zip(writers, result.tokens, result.sequence_lengths,
                                              result.sequences_per_doc):
                w.add_documents(toks, lens, per_doc)
            skipped.update(result.skipped)
            documents += result.documents
            tokens += int(result.tokens[0].size) if result.tokens else 0
            text_bytes += result.text_bytes
            while reported < len(state["truncated"]):
                path_t, line_t = state["truncated"][reported]
                reported += 1
                skipped["truncated_gzip"] += 1
                if args.on_error == "fail":
                    raise InputError(f"{path_t}: truncated_gzip: the gzip stream ends or breaks after line "
                                     f"{line_t - 1}")
            if progress is not None:
                elapsed = max(time.perf_counter() - start, 1e-9)
                progress.set_postfix_str(f"{documents / elapsed:,.0f} docs/s, {text_bytes / elapsed / 1e6:.1f} MB/s "
                                         f"text", refresh=False)
        for path_t, line_t in state["truncated"][reported:]:
            skipped["truncated_gzip"] += 1
            if args.on_error == "fail":
                raise InputError(f"{path_t}: truncated_gzip: the gzip stream ends or breaks after line {line_t - 1}")
        if documents == 0:
            raise InputError(f"no usable documents in {len(files)} input file(s); skipped: {dict(skipped) or 'none'}"
                             + (f"; the first: {first_skip}" if first_skip else ""))
        for w in writers:
            w.finalize()
    finally:
        if pool is not None:
            pool.terminate()
        for w in writers:
            w.__exit__(None, None, None)  # removes temporaries unless finalized
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - start
    summary = {
        "outputs": prefixes, "files": len(files), "documents": documents, "tokens": tokens,
        "input_mb": round(text_bytes / 1e6, 3), "seconds": round(elapsed, 3),
        "docs_per_s": round(documents / elapsed, 1), "mb_per_s": round(text_bytes / 1e6 / elapsed, 3),
        "skipped": {r: skipped.get(r, 0) for r in SKIP_REASONS}, "dtype": str(encoder.dtype),
    }
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--input", nargs="+", required=True, help="JSON-lines files or globs, plain or gzip")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract (one output per key)")
    g.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                   help="skip (and count as oversize_line) a line longer than this, read without holding it "
                        f"whole (default {MAX_LINE_BYTES:,}: far above any real C4 or Wikipedia line)")
    g.add_argument("--max-document-chars", type=int, default=MAX_DOCUMENT_CHARS,
                   help="skip (and count as oversize_document) a text longer than this before tokenizing it "
                        f"(default {MAX_DOCUMENT_CHARS:,}, about 0.6 GB of tokenizer memory at most)")
    g.add_argument("--split-sentences", action="store_true", help="one sequence per sentence")
    g.add_argument("--keep-newlines", action="store_true", help="accepted for Megatron compatibility (no effect)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--vocab-file", default=None, help="WordPiece vocab.txt")
    g.add_argument("--merge-file", default=None, help="accepted for Megatron compatibility (unused)")
    g.add_argument("--tokenizer-model", default=None, help="SentencePiece .model or HF tokenizer.json")
    g.add_argument("--append-eod", action="store_true", help="end each document with the EOD token ([SEP])")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, help="prefix of the output files (directory created)")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--chunk-lines", type=int, default=256, help="lines per unit of work")
    g.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="skip: count bad lines per reason and continue (default); fail: stop at the first")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-interval", type=int, default=None, help="accepted for Megatron compatibility")
    return p


class Stopped(Exception):
    """SIGTERM arrived: unwinds like Ctrl-C (KeyboardInterrupt), so temporaries are removed and the workers
    stopped instead of the process ending on the spot."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("workers", "max_line_bytes", "max_document_chars"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        summary = run(args)
    except (InputError, ValueError, OSError) as err:
        print(f"preprocess_data.py: error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped) as err:
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        print(f"preprocess_data.py: stopped by {signal.Signals(signum).name}; no output written", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items())
    print(f"documents {summary['documents']:,}  tokens {summary['tokens']:,}  input {summary['input_mb']} MB  "
          f"{summary['seconds']} s ({summary['docs_per_s']:,} docs/s, {summary['mb_per_s']} MB/s)")
    print(f"skipped: {skipped}")
    for prefix in summary["outputs"]:
        print(f"wrote {prefix}.bin / {prefix}.idx ({summary['dtype']})")
    print("summary " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
