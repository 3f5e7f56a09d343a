"""GLUE's layouts and users' TSV/CSV/JSON-lines tasks read correctly; bad input fails early with clear errors."""

import json
import shutil

import pytest

from megabert.tasks.data import load_task_data
from megabert.tasks.glue import GLUE_TASKS, glue_task
from megabert.tasks.task import TaskError, user_task
from tests.tasks.tiny_model import GLUE_SAMPLE


def test_every_glue_task_reads_from_the_sample_layout():
    for name in GLUE_TASKS:
        data = load_task_data(glue_task(name, GLUE_SAMPLE))
        assert len(data.train) > 100 and all(len(ex) > 10 for ex in data.evals.values())
        assert (data.train.texts_b is None) == (name in ("sst2", "cola"))
    mnli = load_task_data(glue_task("mnli", GLUE_SAMPLE))
    assert set(mnli.evals) == {"matched", "mismatched"}
    assert mnli.spec.labels == ["contradiction", "entailment", "neutral"]
    stsb = load_task_data(glue_task("stsb", GLUE_SAMPLE))
    assert stsb.spec.num_labels == 1 and stsb.train.labels.dtype.kind == "f"


def test_cola_is_read_without_a_header_by_column_index():
    data = load_task_data(glue_task("cola", GLUE_SAMPLE))
    first_line = (GLUE_SAMPLE / "CoLA" / "train.tsv").read_text().splitlines()[0].split("\t")
    assert data.train.texts_a[0] == first_line[3] and str(data.train.labels[0]) == first_line[1]


def test_glue_dir_accepts_lowercase_names_and_unquoted_quotes(tmp_path):
    (tmp_path / "sst2").mkdir()
    rows = 'sentence\tlabel\nhe said "great film\t1\nit\'s "bad\t0\n'
    for split in ("train", "dev"):
        (tmp_path / "sst2" / f"{split}.tsv").write_text(rows)
    data = load_task_data(glue_task("SST-2", tmp_path))
    assert data.train.texts_a == ['he said "great film', 'it\'s "bad']


def test_missing_glue_files_are_named(tmp_path):
    with pytest.raises(TaskError, match="has no RTE/ directory"):
        glue_task("rte", tmp_path)
    shutil.copytree(GLUE_SAMPLE / "RTE", tmp_path / "RTE")
    (tmp_path / "RTE" / "dev.tsv").unlink()
    with pytest.raises(TaskError, match="dev.tsv does not exist"):
        glue_task("rte", tmp_path)
    with pytest.raises(TaskError, match="unknown GLUE task 'wnli'"):
        glue_task("wnli", tmp_path)


def _write(path, text):
    path.write_text(text)
    return path


def test_user_tsv_pair_task_with_inferred_numeric_labels(tmp_path):
    train = _write(tmp_path / "train.tsv", "q\tdoc\tgrade\na\tb\t10\nc\td\t2\ne\tf\t2\n")
    dev = _write(tmp_path / "dev.tsv", "q\tdoc\tgrade\ng\th\t10\n")
    data = load_task_data(user_task("mine", train, {"dev": dev}, ["q", "doc"], "grade"))
    assert data.spec.labels == ["2", "10"]  # numeric order, not "10" < "2"
    assert data.spec.metrics == ["accuracy", "f1"]
    assert data.train.texts_b == ["b", "d", "f"] and data.evals["dev"].labels.tolist() == [1]


def test_user_csv_respects_quoting(tmp_path):
    train = _write(tmp_path / "train.csv", 'text,label\n"good, very good",pos\n"bad ""really""",neg\nok,pos\n')
    data = load_task_data(user_task("csvtask", train, {"dev": train}, ["text"], "label", labels=["neg", "pos"]))
    assert data.train.texts_a[:2] == ["good, very good", 'bad "really"']
    assert data.train.labels.tolist() == [1, 0, 1]


def test_user_jsonl_regression_and_classification(tmp_path):
    rows = [{"text": "a", "score": 1.5, "flag": True}, {"text": "b", "score": 3, "flag": False}]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    reg = load_task_data(user_task("reg", path, {"dev": path}, ["text"], "score", regression=True))
    assert reg.train.labels.tolist() == [1.5, 3.0] and reg.spec.metrics == ["pearson", "spearman"]
    cls = load_task_data(user_task("cls", path, {"dev": path}, ["text"], "flag"))
    assert cls.spec.labels == ["false", "true"] and cls.train.labels.tolist() == [1, 0]


def test_unknown_column_lists_the_columns_present(tmp_path):
    train = _write(tmp_path / "t.tsv", "sentence\tlabel\nx\t1\ny\t0\n")
    with pytest.raises(TaskError, match=r"column\(s\) 'text' not found; the file has 'sentence', 'label'"):
        load_task_data(user_task("t", train, {"dev": train}, ["text"], "label"))
    jsonl = _write(tmp_path / "t.jsonl", '{"sentence": "x", "label": 1}\n')
    with pytest.raises(TaskError, match=r"t.jsonl:1: column 'text' not found"):
        load_task_data(user_task("t", jsonl, {"dev": jsonl}, ["text"], "label"))


def test_label_outside_declared_set_names_file_and_line(tmp_path):
    train = _write(tmp_path / "t.tsv", "sentence\tlabel\nx\tpos\ny\tneg\nz\tneutral\n")
    with pytest.raises(TaskError, match=r"t.tsv:4: label 'neutral' is not in the label set \['neg', 'pos'\]"):
        load_task_data(user_task("t", train, {"dev": train}, ["sentence"], "label", labels=["neg", "pos"]))


def test_dev_label_unseen_in_training_is_an_error(tmp_path):
    train = _write(tmp_path / "t.tsv", "s\tl\nx\ta\ny\tb\n")
    dev = _write(tmp_path / "d.tsv", "s\tl\nx\tc\n")
    with pytest.raises(TaskError, match=r"d.tsv:2: label 'c' .*inferred from the training file"):
        load_task_data(user_task("t", train, {"dev": dev}, ["s"], "l"))


def test_malformed_rows_and_settings(tmp_path):
    short = _write(tmp_path / "short.tsv", "s\tl\nonly-one-field\n")
    with pytest.raises(TaskError, match=r"short.tsv:2: row has 1 fields but the header has 2"):
        load_task_data(user_task("t", short, {"dev": short}, ["s"], "l"))
    reg = _write(tmp_path / "reg.tsv", "s\tl\nx\thigh\n")
    with pytest.raises(TaskError, match=r"reg.tsv:2: regression label 'high' .* is not a number"):
        load_task_data(user_task("t", reg, {"dev": reg}, ["s"], "l", regression=True))
    with pytest.raises(TaskError, match="does not exist"):
        load_task_data(user_task("t", tmp_path / "nope.tsv", {"dev": reg}, ["s"], "l"))
    with pytest.raises(TaskError, match="one text column .* or two"):
        load_task_data(user_task("t", reg, {"dev": reg}, ["a", "b", "c"], "l"))
    with pytest.raises(TaskError, match=r"metric\(s\) \['pearson'\] do not apply to a classification task"):
        load_task_data(user_task("t", reg, {"dev": reg}, ["s"], "l", labels=["x", "y"], metrics=["pearson"]))
    one_label = _write(tmp_path / "one.tsv", "s\tl\nx\ta\ny\ta\n")
    with pytest.raises(TaskError, match="only the label"):
        load_task_data(user_task("t", one_label, {"dev": one_label}, ["s"], "l"))
