#!/usr/bin/env python
"""Merge Megatron .bin/.idx datasets (e.g. one per C4 shard) into one, by copying bytes (no re-tokenizing).

    python tools/merge_datasets.py --input data/shards/ --output-prefix data/c4_text_document
    python tools/merge_datasets.py --input data/a_text_document data/b_text_document --output-prefix data/ab

--input takes dataset prefixes, globs of prefixes, or directories (every *.idx inside, sorted by name). All
inputs must share one token dtype. The output is written under temporary names and renamed when complete.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys


from megabert.data.indexed_dataset import (
    IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, dataset_exists)


def expand_prefixes(items: list[str]) -> list[str]:
    prefixes: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = [p[:-4] for p in sorted(glob.glob(os.path.join(item, "*.idx")))]
        elif glob.has_magic(item):
            found = sorted({p.rsplit(".", 1)[0] for p in glob.glob(item) if p.endswith((".idx", ".bin"))}
                           | {p for p in glob.glob(item) if dataset_exists(p)})
        else:
            found = [item[:-4] if item.endswith((".bin", ".idx")) else item]
        if not found:
            raise IndexedDatasetError(f"input {item!r} names no dataset (.bin/.idx pair)")
        for p in found:
            if not dataset_exists(p):
                raise IndexedDatasetError(f"dataset {p!r} is incomplete: need both {p}.bin and {p}.idx")
            if p not in prefixes:
                prefixes.append(p)
    return prefixes


def merge(prefixes: list[str], output_prefix: str) -> tuple[int, int]:
    """Concatenates datasets in order; returns (documents, tokens)."""
    datasets = [IndexedDataset(p) for p in prefixes]
    dtypes = {str(d.dtype) for d in datasets}
    if len(dtypes) > 1:
        raise IndexedDatasetError(f"inputs have different token dtypes {sorted(dtypes)}; re-preprocess them with "
                                  f"one tokenizer")
    if os.path.realpath(output_prefix) in {os.path.realpath(p) for p in prefixes}:
        raise IndexedDatasetError("--output-prefix must differ from every input")
    with IndexedDatasetWriter(output_prefix, datasets[0].dtype) as writer:
        for ds in datasets:
            writer.add_dataset(ds)
        writer.finalize()
    return sum(d.num_documents for d in datasets), sum(int(d.sequence_lengths.sum()) for d in datasets)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="dataset prefixes, globs or directories")
    p.add_argument("--output-prefix", required=True)
    args = p.parse_args(argv)
    try:
        prefixes = expand_prefixes(args.input)
        docs, tokens = merge(prefixes, args.output_prefix)
    except (IndexedDatasetError, OSError) as err:
        print(f"merge_datasets.py: error: {err}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets: {docs:,} documents, {tokens:,} tokens -> {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
