"""The Debian-sections task builds reproducibly from a Packages list, by its stated rules, into files the user-task
path reads (fixture lists with fictional packages, not this machine's)."""

import gzip
import json
from pathlib import Path

from megabert.tasks.data import load_task_data
from megabert.tasks.task import user_task
from tests.tasks.tiny_model import load_tool

build_task = load_tool("build_package_task")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SPLIT_FILES = ("train.tsv", "dev.tsv", "test.tsv", "labels.txt")


def build(out: Path, packages: Path = FIXTURES / "Packages", *extra: str) -> dict:
    args = ["--packages", str(packages), "--release-file", str(FIXTURES / "InRelease"), "--output", str(out),
            "--min-section-size", "3", "--dev-fraction", "0.2", "--test-fraction", "0.2", *extra]
    assert build_task.main(args) == 0
    return json.loads((out / "metadata.json").read_text())


def rows(path: Path) -> dict[str, tuple[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "package\tlabel\ttext"
    return {p: (label, text) for p, label, text in (line.split("\t") for line in lines[1:])}


def test_two_builds_are_identical_and_the_user_task_path_reads_them(tmp_path):
    meta = build(tmp_path / "a")
    build(tmp_path / "b")
    for name in SPLIT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    labels = (tmp_path / "a" / "labels.txt").read_text().split()
    assert labels == meta["labels"] == ["games", "libs", "python"]
    spec = user_task("debian_sections", str(tmp_path / "a" / "train.tsv"), {"dev": str(tmp_path / "a" / "dev.tsv")},
                     ["text"], "label", labels=labels)
    data = load_task_data(spec)
    assert len(data.train) == meta["counts"]["train"] and len(data.evals["dev"]) == meta["counts"]["dev"]
    assert sum(meta["counts"].values()) == 31  # 10 libs + 10 python + 11 games, one record per package
    assert meta["release"]["Codename"] == "bookworm" and meta["lists_date"] == "Sat, 11 Jan 2025 10:54:35 UTC"
    readme = (tmp_path / "a" / "README.md").read_text()
    assert "Debian 12.9 (bookworm)" in readme and "## Licence" in readme and "debian/copyright" in readme


def test_small_sections_are_dropped_and_the_archive_area_is_not_part_of_the_label(tmp_path):
    meta = build(tmp_path / "out")
    assert meta["dropped_sections"] == {"doc": 1, "net": 2}  # 'contrib/net' counts as section 'net'
    assert meta["skipped_records"] == {"no_section": 1} and meta["duplicate_records"] == 1
    everything = {**rows(tmp_path / "out" / "train.tsv"), **rows(tmp_path / "out" / "dev.tsv"),
                  **rows(tmp_path / "out" / "test.tsv")}
    assert "exnet-relay" not in everything and "exorphan" not in everything
    # of libexzebra's two versions, the first in (package, version, architecture) order
    assert everything["libexzebra"] == ("libs", "shared library for parsing zebra files")
    kept = build(tmp_path / "two", FIXTURES / "Packages", "--max-sections", "2")
    assert kept["labels"] == ["games", "libs"]  # games has 11 packages, libs and python 10: ties by name


def test_a_package_keeps_its_split_when_other_packages_come_and_go(tmp_path):
    full = build(tmp_path / "full")
    stanzas = (FIXTURES / "Packages").read_text().split("\n\n")
    fewer = tmp_path / "Packages"
    fewer.write_text("\n\n".join(s for s in stanzas if "python3-ex" not in s))
    build(tmp_path / "fewer", fewer)
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        before, after = rows(tmp_path / "full" / split), rows(tmp_path / "fewer" / split)
        assert after == {p: v for p, v in before.items() if not p.startswith("python3-ex")}, split
    assert full["counts"]["dev"] + full["counts"]["test"] > 0
    reseeded = build(tmp_path / "seed", FIXTURES / "Packages", "--seed", "7")
    assert rows(tmp_path / "seed" / "train.tsv").keys() != rows(tmp_path / "full" / "train.tsv").keys()
    assert reseeded["rules"]["seed"] == 7


def test_long_descriptions_come_inline_or_from_a_translation_list(tmp_path):
    build(tmp_path / "out", FIXTURES / "Packages", "--translations", str(FIXTURES / "Translation-en"))
    everything = {}
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        everything.update(rows(tmp_path / "out" / split))
    assert everything["exgame-longdesc"][1] == ("adventure game with a long description Explore caves and forests. "
                                                "Includes a level editor.")
    assert everything["python3-exzebra"][1] == ("Python 3 module for zebra handling This module reads and writes "
                                                "zebra files. It is used by the example tools.")
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["text_source"].startswith("the synopsis line, then the long description (2 of 31 rows")


def test_compressed_lists_give_the_same_task_and_jsonl_is_an_option(tmp_path):
    packed = tmp_path / "Packages.gz"
    packed.write_bytes(gzip.compress((FIXTURES / "Packages").read_bytes()))
    build(tmp_path / "plain")
    build(tmp_path / "gz", packed)
    for name in SPLIT_FILES:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "gz" / name).read_bytes(), name
    build(tmp_path / "jsonl", FIXTURES / "Packages", "--format", "jsonl")
    first = json.loads((tmp_path / "jsonl" / "train.jsonl").read_text().splitlines()[0])
    assert first == dict(zip(("package", "label", "text"),
                             (tmp_path / "plain" / "train.tsv").read_text().splitlines()[1].split("\t")))


def test_unusable_inputs_fail_with_the_file_and_the_fix(tmp_path, capsys):
    not_packages = tmp_path / "notes.txt"
    not_packages.write_text("just some text\n")
    assert build_task.main(["--packages", str(not_packages), "--output", str(tmp_path / "x")]) == 2
    assert f"{not_packages}: no package record with a Section and a Description" in capsys.readouterr().err
    assert build_task.main(["--packages", str(FIXTURES / "Packages"), "--output", str(tmp_path / "y"),
                            "--min-section-size", "11"]) == 2
    assert "only 1 section(s) have >= 11 packages; lower --min-section-size" in capsys.readouterr().err
    assert build_task.main(["--packages", str(tmp_path / "missing"), "--output", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
