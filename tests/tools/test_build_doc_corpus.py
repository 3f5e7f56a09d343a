"""tools/build_doc_corpus.py on a small .deb made here: prose kept, code and excluded pages left out, duplicates
dropped, the same bytes on every build, and manifest or package problems named with what to do."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

spec = importlib.util.spec_from_file_location("build_doc_corpus", REPO_ROOT / "tools" / "build_doc_corpus.py")
corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corpus)

PROSE = " ".join(f"word{i}" for i in range(40))
PAGE = f"""<html><head><title>nav title</title></head><body>
<div class="navheader"><p>{PROSE} navigation that must not appear</p></div>
<h2>Configuring the demo server properly</h2>
<p>{PROSE} first paragraph about the server.</p>
<pre>def secret_code(): return 42</pre>
<p>Another paragraph with <code>inline words</code> in it, long enough to count as prose text.</p>
</body></html>"""


def make_deb(tmp_path: Path, version: str = "1.0-1") -> Path:
    root = tmp_path / "pkg"
    html = root / "usr/share/doc/demo/html"
    (html / "_sources").mkdir(parents=True)
    (html / "dir.html").mkdir()  # a directory named like a page
    (html / "a.html").write_text(PAGE)
    (html / "b.html").write_text(PAGE)  # the same page again: one copy survives
    (html / "c.html").write_text(f"<p>{PROSE} the third page, its own text entirely.</p>")
    (html / "_sources" / "s.html").write_text(f"<p>{PROSE} a source listing, excluded</p>")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: demo\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: demo\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(debs / f"demo_{version.replace(':', '%3a')}_all.deb")],
                   check=True, capture_output=True)
    return debs


def manifest(tmp_path: Path, **entry) -> Path:
    fields = {"package": "demo", "version": "1.0-1", "roots": ["usr/share/doc/demo/html"], "exclude": ["/_sources/"],
              "licence": "MIT"}
    fields.update(entry)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"max_train_mb": 0, "packages": [fields]}))
    return path


def read(out: Path) -> list[dict]:
    with gzip.open(out / corpus.OUTPUT_NAME, "rt") as f:
        return [json.loads(line) for line in f]


def test_prose_is_kept_code_navigation_and_excluded_pages_are_not_and_duplicates_go(tmp_path):
    debs = make_deb(tmp_path)
    corpus.main(["--manifest", str(manifest(tmp_path)), "--debs", str(debs), "--output-dir", str(tmp_path / "out")])
    docs = read(tmp_path / "out")
    texts = "\n".join(d["text"] for d in docs)
    assert len(docs) == 2  # a.html (b.html is its duplicate) and c.html
    assert "first paragraph about the server" in texts and "the third page" in texts
    assert "inline words" in texts and "Configuring the demo server" in texts
    assert "secret_code" not in texts and "navigation" not in texts and "source listing" not in texts
    assert all(d["url"].startswith("file:///usr/share/doc/demo/html/") for d in docs)


def test_the_same_packages_give_the_same_bytes(tmp_path):
    debs = make_deb(tmp_path)
    args = ["--manifest", str(manifest(tmp_path)), "--debs", str(debs)]
    corpus.main(args + ["--output-dir", str(tmp_path / "one")])
    corpus.main(args + ["--output-dir", str(tmp_path / "two")])
    one, two = ((tmp_path / d / corpus.OUTPUT_NAME).read_bytes() for d in ("one", "two"))
    assert one == two


def test_an_epoch_in_the_version_finds_apts_file_name(tmp_path):
    debs = make_deb(tmp_path, version="2:1.0-1")
    corpus.main(["--manifest", str(manifest(tmp_path, version="2:1.0-1")), "--debs", str(debs),
                 "--output-dir", str(tmp_path / "out")])
    assert len(read(tmp_path / "out")) == 2


def test_a_missing_package_without_apt_is_named(tmp_path, monkeypatch):
    debs = make_deb(tmp_path)
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"demo_1.1-1_\*.deb is not in .* apt-get is not available"):
        corpus.main(["--manifest", str(manifest(tmp_path, version="1.1-1")), "--debs", str(debs),
                     "--output-dir", str(tmp_path / "out")])


def test_a_wrong_root_and_a_bad_manifest_are_named(tmp_path):
    debs = make_deb(tmp_path)
    with pytest.raises(SystemExit, match="has no directory usr/share/doc/demo/htm: fix its roots"):
        corpus.main(["--manifest", str(manifest(tmp_path, roots=["usr/share/doc/demo/htm"])), "--debs", str(debs),
                     "--output-dir", str(tmp_path / "out")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"packages": [{"package": "demo", "version": "1.0-1"}]}))
    with pytest.raises(SystemExit, match=r"packages\[0\] needs .*missing: roots, licence"):
        corpus.main(["--manifest", str(bad), "--debs", str(debs), "--output-dir", str(tmp_path / "out")])


def test_the_shipped_manifests_are_well_formed():
    for path in sorted((REPO_ROOT / "configs" / "corpora").glob("*.json")):
        manifest = corpus.load_manifest(path)
        names = [e["package"] for e in manifest["packages"]]
        assert len(names) == len(set(names)), path


def test_the_study_corpus_script_uses_the_shipped_vocabulary_and_it_is_a_30528_entry_wordpiece_vocabulary():
    from megabert.data.tokenizer import load_tokenizer

    shipped = REPO_ROOT / "configs" / "corpora" / "debian_docs_vocab.txt"
    assert "VOCAB:-configs/corpora/debian_docs_vocab.txt" in (REPO_ROOT / "examples" / "study_corpus.sh").read_text()
    entries = shipped.read_text().splitlines()
    assert len(entries) == 30528 and len(set(entries)) == len(entries)
    tokenizer = load_tokenizer("BertWordPieceLowerCase", str(shipped))
    assert tokenizer.vocab_size == 30528
    assert [tokenizer.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tokenizer.encode("PostgreSQL manages the Linux kernel's documentation")
    assert ids and 1 not in ids  # no [UNK]: the vocabulary is of this corpus's text
