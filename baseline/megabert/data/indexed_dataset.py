"""Megatron's memory-mapped indexed dataset (MMIDIDX version 1): a reader with zero-copy slices and a writer.

Two files per dataset prefix:

* ``<prefix>.bin``: every token of every sequence back to back, in one dtype (uint16 when the vocabulary has
  fewer than 65,500 entries, int32 otherwise: Megatron's ``DType.optimal_dtype``).
* ``<prefix>.idx``, little-endian::

      b"MMIDIDX\\x00\\x00"            9-byte magic
      uint64  version (= 1)
      uint8   dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
      uint64  sequence count S
      uint64  document-index count D (= documents + 1)
      int32[S]  sequence lengths (tokens)
      int64[S]  sequence pointers (byte offset of each sequence in .bin)
      int64[D]  document indices: 0, then the sequence index one past each document's last sequence

A "sequence" is a sentence when the preprocessor split sentences, otherwise a whole document. The layout is the
one megatron-core's ``IndexedDataset`` reads and its ``IndexedDatasetBuilder`` writes, so files move both ways.

Files are written under temporary names and renamed only when complete (``.bin`` first, ``.idx`` last), so a
killed run never leaves a dataset that opens.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document-index count

DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A .bin/.idx pair is missing, truncated or not in the MMIDIDX v1 format."""


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def dataset_exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(bin_path(prefix)) and os.path.isfile(idx_path(prefix))


def optimal_dtype(vocab_size: Optional[int]) -> type:
    """uint16 when every token id fits (Megatron's rule: vocab < 65,500), int32 otherwise."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


# ------------------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------------------


class IndexedDataset:
    """Read-only view of ``<prefix>.bin``/``.idx``; slices are numpy views into the memory map (no copy).

    ``ds[i]`` is sequence i; ``ds.document(j)`` is document j (its sequences back to back, contiguous in the
    .bin file). Pickling keeps only the prefix, so DataLoader workers re-open the maps instead of copying them.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self._open()

    def _open(self) -> None:
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        for path in (ipath, bpath):
            if not os.path.isfile(path):
                raise IndexedDatasetError(
                    f"dataset file {path!r} does not exist; data paths are prefixes without .bin/.idx, as written "
                    f"by tools/preprocess_data.py (e.g. data/sample/c4_sample_text_document)")
        size = os.path.getsize(ipath)
        with open(ipath, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or header[:9] != INDEX_MAGIC:
            raise IndexedDatasetError(f"{ipath!r} is not a Megatron MMIDIDX index (bad magic or truncated header)")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", header[9:])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{ipath!r} has index version {version}; only version 1 is supported")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{ipath!r} has unknown dtype code {code}")
        expected = HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
        if size < expected:
            raise IndexedDatasetError(f"{ipath!r} is truncated: {size} bytes, the header promises {expected}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        with open(ipath, "rb") as f:
            self._idx_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._idx_map
        offset = HEADER_BYTES
        self.sequence_lengths = np.frombuffer(buf, dtype=np.int32, count=n_seq, offset=offset)
        offset += self.sequence_lengths.nbytes
        self.sequence_pointers = np.frombuffer(buf, dtype=np.int64, count=n_seq, offset=offset)
        offset += self.sequence_pointers.nbytes
        self.document_indices = np.frombuffer(buf, dtype=np.int64, count=n_doc, offset=offset)
        bin_bytes = os.path.getsize(bpath)
        need = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n_seq else 0
        if bin_bytes < need:
            raise IndexedDatasetError(f"{bpath!r} is truncated: {bin_bytes} bytes, the index needs {need}")
        # Plain ndarray views of mmap objects: slicing them is cheaper than slicing np.memmap. An empty file
        # cannot be mapped; an empty dataset gets an empty array.
        self._bin_map = None
        if bin_bytes:
            with open(bpath, "rb") as f:
                self._bin_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.tokens = (np.frombuffer(self._bin_map, dtype=self.dtype, count=bin_bytes // self.dtype.itemsize)
                       if self._bin_map is not None else np.zeros(0, dtype=self.dtype))

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self._open()

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sequence_lengths[i])]

    def get(self, i: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence i (a view)."""
        seq = self[i]
        return seq[offset:] if length is None else seq[offset:offset + length]

    def one_sequence_per_document(self, chunk: int = 1 << 22) -> bool:
        """True when every document is exactly one sequence (no sentence splitting), checked in chunks."""
        if len(self) != self.num_documents:
            return False
        for lo in range(0, self.num_documents, chunk):
            hi = min(lo + chunk, self.num_documents)
            if not np.array_equal(self.document_indices[lo + 1:hi + 1], np.arange(lo + 1, hi + 1)):
                return False
        return True

    def document_token_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(start element, token count) of every document in .bin; a document's sequences are contiguous."""
        first = self.document_indices[:-1]
        if len(self.sequence_lengths) == 0:
            zeros = np.zeros(self.num_documents, dtype=np.int64)
            return zeros, zeros.copy()
        cum = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)])
        lengths = cum[self.document_indices[1:]] - cum[first]
        safe_first = np.minimum(first, max(len(self.sequence_pointers) - 1, 0))
        starts = self.sequence_pointers[safe_first] // self.dtype.itemsize
        return starts.astype(np.int64), lengths.astype(np.int64)

    def document(self, j: int) -> np.ndarray:
        """All tokens of document j (a view)."""
        lo, hi = int(self.document_indices[j]), int(self.document_indices[j + 1])
        if hi == lo:
            return self.tokens[:0]
        start = int(self.sequence_pointers[lo]) // self.dtype.itemsize
        count = int(self.sequence_lengths[lo:hi].sum())
        return self.tokens[start:start + count]


# ------------------------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------------------------


class IndexedDatasetWriter:
    """Streams documents into ``<prefix>.bin``/``.idx`` under temporary names; ``finalize`` renames them.

    Use as a context manager: leaving the block with an exception deletes the temporary files, so an
    interrupted run leaves no dataset behind (and never a half-written one under the final name).
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type = np.uint16):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} cannot be stored in an MMIDIDX index")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        self._bin_tmp, self._idx_tmp = bin_path(self.prefix) + tag, idx_path(self.prefix) + tag
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[np.ndarray] = []
        self._doc_ends: list[np.ndarray] = []
        self._num_sequences = 0
        self._finalized = False

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._finalized:
            self.abort()

    def add_document(self, tokens: np.ndarray | Sequence[int], lengths: Optional[Sequence[int]] = None) -> None:
        """One document; ``lengths`` splits it into sequences (sentences), default one sequence."""
        arr = np.asarray(tokens)
        lens = np.asarray([arr.size] if lengths is None else lengths, dtype=np.int64)
        if int(lens.sum()) != arr.size:
            raise ValueError(f"sequence lengths sum to {int(lens.sum())} but the document has {arr.size} tokens")
        self.add_documents(arr, lens, np.asarray([len(lens)], dtype=np.int64))

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_doc: np.ndarray) -> None:
        """Many documents at once: all tokens back to back, each sequence's length, each document's count."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < np.iinfo(self.dtype).min or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids [{tokens.min()}, {tokens.max()}] do not fit in {self.dtype}")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(sequence_lengths, dtype=np.int32))
        ends = self._num_sequences + np.cumsum(np.asarray(sequences_per_doc, dtype=np.int64))
        self._doc_ends.append(ends)
        self._num_sequences += int(np.asarray(sequence_lengths).size)

    def add_dataset(self, other: IndexedDataset) -> None:
        """Appends a whole dataset (same dtype) by copying its .bin bytes: the merge tool's inner step."""
        if other.dtype != self.dtype:
            raise ValueError(f"cannot merge {other.prefix!r} ({other.dtype}) into a {self.dtype} dataset")
        self._bin.flush()
        with open(bin_path(other.prefix), "rb") as src:
            shutil.copyfileobj(src, self._bin, length=16 << 20)
        self._lengths.append(np.asarray(other.sequence_lengths, dtype=np.int32))
        self._doc_ends.append(self._num_sequences + np.asarray(other.document_indices[1:], dtype=np.int64))
        self._num_sequences += len(other)

    def finalize(self) -> None:
        """Writes the index and renames both files to their final names (.bin first, .idx last)."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        doc_ends = np.concatenate(self._doc_ends) if self._doc_ends else np.zeros(0, np.int64)
        write_index(self._idx_tmp, self.dtype, lengths, np.concatenate([[0], doc_ends]).astype(np.int64))
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, idx_path(self.prefix))
        self._finalized = True

    def abort(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)


def write_index(path: str, dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: Iterable[int]) -> None:
    """Writes an MMIDIDX v1 .idx file; sequence pointers are the byte offsets implied by the lengths."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    docs = np.asarray(document_indices, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<QBQQ", INDEX_VERSION, CODE_OF_DTYPE[np.dtype(dtype)], len(lengths), len(docs)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(docs.tobytes())
