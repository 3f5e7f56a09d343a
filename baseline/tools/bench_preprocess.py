#!/usr/bin/env python
"""preprocess_data.py throughput against the raw batch-encode throughput of the same tokenizer on the same text.

    python tools/bench_preprocess.py --input data/sample/c4-train.00000-of-00001.json.gz \\
        --tokenizer-type BertWordPieceLowerCase --vocab-file data/sample/vocab.txt --workers 1 2

For each N in --workers, in one run:
* raw: a fresh process holds every text in memory and calls the tokenizer's encode_batch (batches of 256,
  ids materialised) on N threads (RAYON_NUM_THREADS=N) -- the ceiling for N cores;
* preprocess: ``tools/preprocess_data.py --workers N`` end to end (gzip, JSON, tokenize, write .bin/.idx),
  timed by its own summary (after start-up) and by wall clock (with start-up).
Each is the best of --repeats runs (the machine may be shared). Tokens per CPU-second (all threads and
processes, start-up included for preprocess) compares the work done independently of other load.
Targets: preprocess >= 80% of raw for the same N, and near-linear scaling from 1 to 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def raw_encode(args: argparse.Namespace) -> dict:
    """In-process (called in a child with RAYON_NUM_THREADS set): time encode_batch over all texts."""
    from megabert.data.jsonl import expand_inputs, read_lines
    from megabert.data.tokenizer import load_tokenizer

    texts = []
    for path in expand_inputs(args.input):
        for lines, _, _ in read_lines(path):
            for line in lines:
                try:
                    value = json.loads(line).get(args.json_key)
                except (ValueError, AttributeError):
                    continue
                if isinstance(value, str) and value.strip():
                    texts.append(value)
    tok = load_tokenizer(args.tokenizer_type, args.vocab_file, args.tokenizer_model)
    tok.encode_batch(texts[:256])  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()  # process time covers all threads
    tokens = 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(ids) for ids in tok.encode_batch(texts[i:i + 256]))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {"documents": len(texts), "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu}


def run_raw(args: argparse.Namespace, threads: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), RAYON_RS_NUM_CPUS=str(threads),
               TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    cmd = [sys.executable, __file__, "--raw-child", *args.argv]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_preprocess(args: argparse.Namespace, workers: int, out_dir: str) -> dict:
    cmd = [sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", *args.input,
           "--json-keys", args.json_key, "--output-prefix", os.path.join(out_dir, f"bench_w{workers}"),
           "--tokenizer-type", args.tokenizer_type, "--workers", str(workers), "--no-progress"]
    if args.vocab_file:
        cmd += ["--vocab-file", args.vocab_file]
    if args.tokenizer_model:
        cmd += ["--tokenizer-model", args.tokenizer_model]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes its reaped worker processes
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(next(l for l in out.splitlines() if l.startswith("summary "))[len("summary "):])
    return {"documents": summary["documents"], "tokens": summary["tokens"], "seconds": summary["seconds"],
            "wall_seconds": wall, "cpu_seconds": cpu}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", default=[str(ROOT / "data/sample/c4-train.00000-of-00001.json.gz")])
    p.add_argument("--json-key", default="text")
    p.add_argument("--tokenizer-type", default="BertWordPieceLowerCase")
    p.add_argument("--vocab-file", default=str(ROOT / "data/sample/vocab.txt"))
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write results to this JSON file")
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.raw_child:
        print(json.dumps(raw_encode(args)))
        return
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, input {' '.join(args.input)}, best of {args.repeats}")
    print(f"{'N':>2} {'raw tok/s':>11} {'preprocess tok/s':>17} {'vs raw':>7} {'docs/s':>8} {'wall s':>7} "
          f"{'raw tok/cpu-s':>14} {'prep tok/cpu-s':>15} {'cpu vs raw':>10}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            raw = min((run_raw(args, n) for _ in range(args.repeats)), key=lambda r: r["seconds"])
            pre = min((run_preprocess(args, n, tmp) for _ in range(args.repeats)), key=lambda r: r["seconds"])
            raw_rate, pre_rate = raw["tokens"] / raw["seconds"], pre["tokens"] / pre["seconds"]
            results.append({"workers": n, "raw_tokens_per_s": round(raw_rate), "preprocess_tokens_per_s":
                            round(pre_rate), "ratio": round(pre_rate / raw_rate, 3), "raw": raw, "preprocess": pre})
            raw_cpu, pre_cpu = raw["tokens"] / raw["cpu_seconds"], pre["tokens"] / pre["cpu_seconds"]
            results[-1].update(raw_tokens_per_cpu_s=round(raw_cpu), preprocess_tokens_per_cpu_s=round(pre_cpu))
            print(f"{n:>2} {raw_rate:>11,.0f} {pre_rate:>17,.0f} {pre_rate / raw_rate:>7.0%} "
                  f"{pre['documents'] / pre['seconds']:>8,.0f} {pre['wall_seconds']:>7.2f} "
                  f"{raw_cpu:>14,.0f} {pre_cpu:>15,.0f} {pre_cpu / raw_cpu:>10.0%}", flush=True)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            speedup = r["preprocess_tokens_per_s"] / base["preprocess_tokens_per_s"]
            print(f"scaling {base['workers']} -> {r['workers']} workers: x{speedup:.2f} "
                  f"(raw encode x{r['raw_tokens_per_s'] / base['raw_tokens_per_s']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
