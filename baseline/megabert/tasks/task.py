"""What a fine-tuning task is: where its rows live, which columns hold text and label, how it is scored.

A `TaskSpec` is plain data (JSON-serialisable, so a worker process can receive it). GLUE tasks are built by
`megabert.tasks.glue.glue_task`, a user's own data by `user_task`; both go through the same reader, checks and
fine-tuning loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from megabert.tasks.metrics import METRICS, REGRESSION_METRICS

Column = Union[str, int]
"""A column is named by its header (str) or, for files without a header, by its 0-based index (int)."""

FORMATS = ("tsv", "csv", "jsonl")


class TaskError(ValueError):
    """The task's files or settings are unusable; the message names the file, line or column and the fix."""


@dataclass
class TaskSpec:
    name: str
    """Short name used in output paths and result tables (e.g. 'mnli', 'my_sentiment')."""
    train_file: str
    """Training rows."""
    eval_files: dict = field(default_factory=dict)
    """Evaluation split name -> file, e.g. {'dev': ...} or MNLI's {'matched': ..., 'mismatched': ...}."""
    text_columns: list = field(default_factory=list)
    """One column (single sentence) or two (sentence pair)."""
    label_column: Column = "label"
    """Column holding the label (a class name, or a number for regression)."""
    labels: Optional[list] = None
    """Class names in index order; None means inferred from the training file (classification) or regression."""
    regression: bool = False
    """Predict a real number (num_labels 1, MSE loss) instead of a class."""
    metrics: list = field(default_factory=list)
    """Metric names from megabert.tasks.metrics.METRICS; empty: chosen once the labels are known
    (accuracy, plus F1 for two classes; Pearson and Spearman for regression)."""
    file_format: str = "tsv"
    """'tsv', 'csv' or 'jsonl'."""
    has_header: bool = True
    """Whether the first line of a TSV/CSV file names the columns (CoLA's files have none)."""
    quoting: bool = False
    """Honour quote characters in TSV/CSV. GLUE's TSVs are unquoted: a '"' is part of the text."""
    is_glue: bool = False
    """Counts towards the GLUE average."""

    @property
    def num_labels(self) -> int:
        """Classifier outputs: 1 for regression, else the number of classes (labels must be resolved)."""
        if self.regression:
            return 1
        if self.labels is None:
            raise TaskError(f"task {self.name}: labels are not resolved yet (call load_task_data first)")
        return len(self.labels)

    def validate(self) -> None:
        """Checks settings and that the files exist; cheap (reads no rows)."""
        where = f"task {self.name!r}"
        if self.file_format not in FORMATS:
            raise TaskError(f"{where}: file format {self.file_format!r} is not one of {', '.join(FORMATS)}")
        if len(self.text_columns) not in (1, 2):
            raise TaskError(f"{where}: give one text column (single sentence) or two (sentence pair), "
                            f"got {self.text_columns!r}")
        if not self.eval_files:
            raise TaskError(f"{where}: no evaluation file; pass one (e.g. --dev-file)")
        for path in [self.train_file, *self.eval_files.values()]:
            if not Path(path).is_file():
                raise TaskError(f"{where}: file {path} does not exist")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise TaskError(f"{where}: unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
        wrong_kind = [m for m in self.metrics if (m in REGRESSION_METRICS) != self.regression]
        if wrong_kind:
            kind = "regression" if self.regression else "classification"
            raise TaskError(f"{where}: metric(s) {wrong_kind} do not apply to a {kind} task")
        if self.regression and self.labels:
            raise TaskError(f"{where}: a regression task has no label set; drop the labels or the regression flag")
        if self.labels is not None and len(set(map(str, self.labels))) != len(self.labels):
            raise TaskError(f"{where}: duplicate entries in the label set {self.labels}")
        if self.labels is not None and len(self.labels) < 2:
            raise TaskError(f"{where}: a classification task needs at least two labels, got {self.labels}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskSpec":
        return cls(**data)


def default_metrics(regression: bool, num_labels: Optional[int]) -> list[str]:
    """Pearson/Spearman for regression; accuracy (plus F1 when binary) for classification."""
    if regression:
        return ["pearson", "spearman"]
    return ["accuracy", "f1"] if num_labels == 2 else ["accuracy"]


def infer_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise TaskError(f"cannot tell the format of {path} from its extension; pass --format tsv|csv|jsonl")


def user_task(name: str, train_file: str, eval_files: dict, text_columns: list, label_column: Column,
              labels: Optional[list] = None, regression: bool = False, metrics: Optional[list] = None,
              file_format: Optional[str] = None, has_header: bool = True) -> TaskSpec:
    """A user's own classification/regression task from TSV, CSV or JSON lines with named columns."""
    fmt = file_format or infer_format(train_file)
    spec = TaskSpec(
        name=name, train_file=str(train_file), eval_files={k: str(v) for k, v in eval_files.items()},
        text_columns=list(text_columns), label_column=label_column,
        labels=[str(x) for x in labels] if labels else None, regression=regression,
        metrics=list(metrics or []),
        file_format=fmt, has_header=has_header, quoting=fmt == "csv")
    return spec
