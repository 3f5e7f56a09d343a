"""Reads a task's files into examples, checking everything a run needs before any training starts.

Errors name the file, the line and the column: a missing file, an unknown column, a row with too few fields,
a label outside the declared set, a regression label that is not a number.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from megabert.tasks.task import Column, TaskError, TaskSpec, default_metrics

# GLUE rows can be long (QQP answers, MNLI parses); the csv module's default field limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Examples:
    """One split of a task: texts and labels (class indices, or floats for regression)."""

    texts_a: list
    texts_b: Optional[list]
    labels: np.ndarray  # int64 [N] class indices, or float32 [N] regression targets

    def __len__(self) -> int:
        return len(self.texts_a)


@dataclass
class TaskData:
    spec: TaskSpec  # labels and metrics resolved
    train: Examples
    evals: dict  # split name -> Examples


def _iter_rows(path: Path, spec: TaskSpec) -> Iterator[tuple[int, dict | list]]:
    """(line number, row) pairs; rows are dicts (header or JSON lines) or lists (headerless TSV/CSV)."""
    if spec.file_format == "jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise TaskError(f"{path}:{line_no}: each line must be a JSON object, got {type(row).__name__}")
                yield line_no, row
        return
    delimiter = "\t" if spec.file_format == "tsv" else ","
    quoting = csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = None
        for fields in reader:
            line_no = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if spec.has_header and header is None:
                header = [h.strip() for h in fields]
                _check_columns(path, spec, header)
                continue
            if header is None:
                yield line_no, fields
            elif len(fields) < len(header):
                raise TaskError(f"{path}:{line_no}: row has {len(fields)} fields but the header has {len(header)} "
                                f"({', '.join(header)}); is the file {spec.file_format.upper()} "
                                f"{'with quoting' if spec.quoting else 'without quoting'}?")
            else:
                yield line_no, dict(zip(header, fields))


def _wanted_columns(spec: TaskSpec) -> list[Column]:
    return [*spec.text_columns, spec.label_column]


def _check_columns(path: Path, spec: TaskSpec, header: list[str]) -> None:
    missing = [c for c in _wanted_columns(spec) if c not in header]
    if missing:
        raise TaskError(f"{path}: column(s) {', '.join(map(repr, missing))} not found; the file has "
                        f"{', '.join(map(repr, header))} (set the text/label columns to existing names)")


def _field(path: Path, line_no: int, row: dict | list, column: Column):
    if isinstance(row, list):
        if not isinstance(column, int):
            raise TaskError(f"{path}: the file has no header, so column {column!r} must be a 0-based index")
        if column >= len(row):
            raise TaskError(f"{path}:{line_no}: row has {len(row)} fields, column index {column} is out of range")
        return row[column]
    if column not in row:
        raise TaskError(f"{path}:{line_no}: column {column!r} not found; the row has {', '.join(map(repr, row))}")
    return row[column]


def _label_text(value) -> str:
    """Labels compare as strings: 1, '1' and 1.0 from JSON are the same class '1'; true -> 'true'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_rows(path: str | Path, spec: TaskSpec) -> tuple[list, Optional[list], list]:
    """Texts (a, optional b) and raw label strings of every row, with column checks."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task {spec.name!r}: file {path} does not exist")
    texts_a, texts_b, raw_labels = [], [] if len(spec.text_columns) == 2 else None, []
    for line_no, row in _iter_rows(path, spec):
        texts = [_field(path, line_no, row, c) for c in spec.text_columns]
        label = _field(path, line_no, row, spec.label_column)
        if label is None or _label_text(label) == "":
            raise TaskError(f"{path}:{line_no}: empty label in column {spec.label_column!r}")
        texts = ["" if t is None else str(t) for t in texts]
        texts_a.append(texts[0])
        if texts_b is not None:
            texts_b.append(texts[1])
        raw_labels.append((line_no, label))
    if not texts_a:
        raise TaskError(f"{path}: no rows")
    return texts_a, texts_b, raw_labels


def _sort_labels(values: set[str]) -> list[str]:
    """Numeric labels in numeric order ('2' before '10'), others alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _encode_labels(path: str, spec: TaskSpec, raw: list, inferred: bool = False) -> np.ndarray:
    if spec.regression:
        out = np.empty(len(raw), dtype=np.float32)
        for i, (line_no, value) in enumerate(raw):
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise TaskError(f"{path}:{line_no}: regression label {value!r} in column {spec.label_column!r} "
                                f"is not a number") from None
        return out
    index = {label: i for i, label in enumerate(spec.labels)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, (line_no, value) in enumerate(raw):
        key = _label_text(value)
        if key not in index:
            raise TaskError(f"{path}:{line_no}: label {key!r} is not in the label set {spec.labels} of task "
                            f"{spec.name!r}" + (" (inferred from the training file; declare the full set with "
                                                "--labels)" if inferred else ""))
        out[i] = index[key]
    return out


def load_task_data(spec: TaskSpec) -> TaskData:
    """Reads and checks every split; resolves inferred labels and default metrics on a copy of `spec`."""
    spec = TaskSpec.from_dict(spec.to_dict())
    spec.validate()
    splits = {"train": spec.train_file, **spec.eval_files}
    rows = {name: read_rows(path, spec) for name, path in splits.items()}
    inferred = not spec.regression and spec.labels is None
    if inferred:
        seen = {_label_text(v) for _, v in rows["train"][2]}
        if len(seen) < 2:
            raise TaskError(f"task {spec.name!r}: the training file has only the label(s) {sorted(seen)}; a "
                            f"classifier needs two or more (or use regression)")
        spec.labels = _sort_labels(seen)
    if not spec.metrics:
        spec.metrics = default_metrics(spec.regression, None if spec.regression else len(spec.labels))
    spec.validate()
    examples = {name: Examples(a, b, _encode_labels(splits[name], spec, raw, inferred))
                for name, (a, b, raw) in rows.items()}
    train = examples.pop("train")
    return TaskData(spec, train, examples)
