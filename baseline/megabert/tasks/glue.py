"""The eight GLUE tasks MosaicBERT reports, read from GLUE's distributed layout.

    <glue_dir>/CoLA/{train,dev}.tsv      no header: source, label, original label, sentence
    <glue_dir>/SST-2/{train,dev}.tsv     sentence  label
    <glue_dir>/MRPC/{train,dev}.tsv      Quality  #1 ID  #2 ID  #1 String  #2 String
    <glue_dir>/QQP/{train,dev}.tsv       id  qid1  qid2  question1  question2  is_duplicate
    <glue_dir>/STS-B/{train,dev}.tsv     index genre filename year old_index source1 source2 sentence1 sentence2 score
    <glue_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv   ... sentence1 sentence2 ... gold_label
    <glue_dir>/QNLI/{train,dev}.tsv      index  question  sentence  label
    <glue_dir>/RTE/{train,dev}.tsv       index  sentence1  sentence2  label

The files are tab-separated without quoting (a '"' is part of the text), as GLUE's loader reads them. Columns
are found by header name, so extra columns (MNLI's parses, STS-B's genre) are ignored. Directory names may
also be lower case or without the dash (sst2, sts-b, stsb).

Scores follow GLUE: a task with two metrics scores their mean, MNLI the mean of matched and mismatched
accuracy, and the GLUE average is the mean of the task scores (WNLI excluded, as in BERT and MosaicBERT).
"""

from __future__ import annotations

from pathlib import Path

from megabert.tasks.task import TaskError, TaskSpec

# name -> (directory, text columns, label column, labels, metrics, eval split -> file)
_GLUE = {
    "mnli": ("MNLI", ["sentence1", "sentence2"], "gold_label", ["contradiction", "entailment", "neutral"],
             ["accuracy"], {"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"}),
    "qqp": ("QQP", ["question1", "question2"], "is_duplicate", ["0", "1"], ["accuracy", "f1"], None),
    "qnli": ("QNLI", ["question", "sentence"], "label", ["entailment", "not_entailment"], ["accuracy"], None),
    "sst2": ("SST-2", ["sentence"], "label", ["0", "1"], ["accuracy"], None),
    "cola": ("CoLA", [3], 1, ["0", "1"], ["matthews"], None),
    "stsb": ("STS-B", ["sentence1", "sentence2"], "score", None, ["pearson", "spearman"], None),
    "mrpc": ("MRPC", ["#1 String", "#2 String"], "Quality", ["0", "1"], ["accuracy", "f1"], None),
    "rte": ("RTE", ["sentence1", "sentence2"], "label", ["entailment", "not_entailment"], ["accuracy"], None),
}

GLUE_TASKS = tuple(_GLUE)
"""Task names in the order results are reported."""

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _GLUE:
        raise TaskError(f"unknown GLUE task {name!r}; choose from {', '.join(GLUE_TASKS)}")
    return key


def find_task_dir(glue_dir: str | Path, directory: str) -> Path:
    """GLUE's directory for a task, accepting case and dash variants (MNLI, mnli; SST-2, sst2)."""
    glue_dir = Path(glue_dir)
    if not glue_dir.is_dir():
        raise TaskError(f"GLUE directory {glue_dir} does not exist")
    wanted = directory.lower().replace("-", "")
    for child in sorted(glue_dir.iterdir()):
        if child.is_dir() and child.name.lower().replace("-", "").replace("_", "") == wanted:
            return child
    raise TaskError(f"{glue_dir} has no {directory}/ directory (GLUE layout: {glue_dir}/{directory}/train.tsv)")


def glue_task(name: str, glue_dir: str | Path) -> TaskSpec:
    """The TaskSpec of GLUE task `name` under `glue_dir`; checks that its files exist."""
    key = canonical_name(name)
    directory, text_columns, label_column, labels, metrics, eval_files = _GLUE[key]
    task_dir = find_task_dir(glue_dir, directory)
    eval_files = eval_files or {"dev": "dev.tsv"}
    spec = TaskSpec(
        name=key, train_file=str(task_dir / "train.tsv"),
        eval_files={split: str(task_dir / file) for split, file in eval_files.items()},
        text_columns=list(text_columns), label_column=label_column, labels=labels, regression=labels is None,
        metrics=list(metrics), file_format="tsv", has_header=key != "cola", quoting=False, is_glue=True)
    spec.validate()
    return spec
