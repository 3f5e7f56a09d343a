#!/usr/bin/env python
"""Build a corpus of real English prose from Debian documentation packages, in C4's JSON-lines layout.

    python tools/build_doc_corpus.py --debs /tmp/debdocs --output-dir data/sample        # the bundled sample
    python tools/build_doc_corpus.py --manifest configs/corpora/debian_docs.json --debs /tmp/studydebs \
        --output-dir data/study_corpus                                                  # ~10x larger, for studies

The manifest (JSON; default configs/corpora/sample.json) names each package, its exact version, the directories of
its English HTML manual (`roots`), path fragments to leave out (`exclude`, e.g. "/_sources/") and the text's licence,
plus `max_train_mb`, a cap on the text kept (0: no cap). --debs holds the .deb files (the script fetches missing ones
with `apt-get download <name>=<version>` where apt is available, and says which version apt offers when the pinned
one is gone). Prose is taken from the HTML pages: the text of <p>, <li>, <dt>, <dd>, <td> and heading elements,
never code blocks, scripts or navigation. Each page becomes one or more documents of at most ~250 words (split at
paragraph boundaries), like C4's web pages. Documents are de-duplicated, shuffled with a fixed seed and capped;
the loader carves train/valid/test out of this one shard (data.split). Output is byte-for-byte reproducible from
the same packages (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import html.parser
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "configs" / "corpora" / "sample.json"
OUTPUT_NAME = "c4-train.00000-of-00001.json.gz"
PROSE_TAGS = {"p", "li", "dt", "dd", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "caption"}
SKIP_TAGS = {"pre", "script", "style", "nav", "head", "title", "button", "form", "svg", "math"}
SKIP_CLASSES = re.compile(r"\b(navheader|navfooter|sphinxsidebar|related|footer|toc|breadcrumb|headerlink|"
                          r"copyright|highlight|literallayout|programlisting|screen|synopsis)\b")
MAX_WORDS, MIN_WORDS = 250, 30


class ProseExtractor(html.parser.HTMLParser):
    """Collects paragraphs: text of the innermost prose element, outside skipped subtrees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, skipped)
        self._buf: list[str] = []

    def _skipping(self) -> bool:
        return any(skip for _, skip in self._stack)

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "hr", "meta", "link", "input", "col", "area", "wbr", "source"):
            return
        cls = dict(attrs).get("class") or ""
        skip = tag in SKIP_TAGS or bool(SKIP_CLASSES.search(cls))
        if tag in PROSE_TAGS and not self._skipping():
            self._flush()
        self._stack.append((tag, skip))

    def handle_endtag(self, tag):
        if not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break
        if tag in PROSE_TAGS:
            self._flush()

    def handle_data(self, data):
        if not self._skipping() and any(t in PROSE_TAGS for t, _ in self._stack):
            self._buf.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        self._buf = []
        if len(text.split()) >= 4 and re.search(r"[a-zA-Z]{3}", text):
            self.paragraphs.append(text)


def documents_of_page(paragraphs: list[str]) -> list[str]:
    """Groups a page's paragraphs into documents of <= MAX_WORDS words; drops tiny leftovers."""
    docs, cur, words = [], [], 0
    for para in paragraphs:
        n = len(para.split())
        if cur and words + n > MAX_WORDS:
            docs.append("\n".join(cur))
            cur, words = [], 0
        cur.append(para)
        words += n
    if cur:
        docs.append("\n".join(cur))
    return [d for d in docs if len(d.split()) >= MIN_WORDS]


class CorpusError(Exception):
    """A manifest or package problem, with what to do about it."""


def load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(f"cannot read the corpus manifest {path}: {e}") from None
    packages = manifest.get("packages")
    if not isinstance(packages, list) or not packages:
        raise CorpusError(f"{path}: 'packages' must be a non-empty list")
    for i, entry in enumerate(packages):
        missing = [k for k in ("package", "version", "roots", "licence") if k not in entry]
        if missing or not isinstance(entry.get("roots"), list) or not entry.get("roots"):
            raise CorpusError(f"{path}: packages[{i}] needs package, version, licence and a non-empty roots list "
                              f"(missing: {', '.join(missing) or 'roots entries'})")
    return manifest


def deb_path(debs: Path, name: str, version: str) -> Path | None:
    """The .deb of exactly this version (apt writes an epoch's ':' as '%3a' in file names)."""
    found = sorted(debs.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
    return found[0] if found else None


def ensure_debs(debs: Path, packages: list[dict]) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    for entry in packages:
        name, version = entry["package"], entry["version"]
        if deb_path(debs, name, version) is not None:
            continue
        if shutil.which("apt-get") is None:
            raise CorpusError(f"{name}_{version}_*.deb is not in {debs} and apt-get is not available to fetch it")
        proc = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, capture_output=True, text=True)
        if proc.returncode != 0 or deb_path(debs, name, version) is None:
            policy = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True).stdout
            offered = re.search(r"Candidate:\s*(\S+)", policy)
            raise CorpusError(f"apt cannot fetch {name}={version}"
                              + (f"; it offers version {offered.group(1)}" if offered else "")
                              + ": put that .deb in --debs, or change the version in the manifest (the corpus then"
                              " differs from the one documented)")


def page_documents(target: Path, entry: dict) -> tuple[int, list[dict]]:
    """Every HTML page under the entry's roots (minus `exclude`) -> documents with timestamp and url."""
    pages = sorted({page for root in entry["roots"] for page in (target / root).rglob("*.html") if page.is_file()})
    pages = [p for p in pages if not any(x in f"/{p.relative_to(target)}" for x in entry.get("exclude", []))]
    records = []
    for page in pages:
        parser = ProseExtractor()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        stamp = dt.datetime.fromtimestamp(page.stat().st_mtime, dt.timezone.utc)
        rel = page.relative_to(target)
        for i, text in enumerate(documents_of_page(parser.paragraphs)):
            records.append({"text": text, "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "url": f"file:///{rel}" + (f"#part{i}" if i else "")})
    return len(pages), records


def build(manifest: dict, debs: Path, out: Path, seed: int, max_train_mb: float) -> Path:
    packages = manifest["packages"]
    ensure_debs(debs, packages)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in packages:
            name, version = entry["package"], entry["version"]
            target = Path(tmp) / name
            subprocess.run(["dpkg-deb", "-x", str(deb_path(debs, name, version)), str(target)], check=True)
            for root in entry["roots"]:
                if not (target / root).is_dir():
                    raise CorpusError(f"{name} {version} has no directory {root}: fix its roots in the manifest")
            pages, docs = page_documents(target, entry)
            print(f"{name} {version}: {pages} pages -> {len(docs)} documents", file=sys.stderr)
            records += docs
            shutil.rmtree(target)
    # De-duplicate (manuals repeat boilerplate pages), shuffle, cap.
    seen, unique = set(), []
    for r in records:
        if r["text"] not in seen:
            seen.add(r["text"])
            unique.append(r)
    random.Random(seed).shuffle(unique)
    budget, kept = max_train_mb * 1e6, []
    for r in unique:
        budget -= len(r["text"].encode())
        if max_train_mb and budget < 0:
            break
        kept.append(r)
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_NAME
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in kept:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    words = sum(len(r["text"].split()) for r in kept)
    print(f"{path}: {len(kept)} documents, {words} words, {path.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="packages to read (default: the sample's)")
    p.add_argument("--debs", required=True, help="directory with (or for) the .deb files")
    p.add_argument("--output-dir", default="data/sample")
    p.add_argument("--max-train-mb", type=float, default=None,
                   help="cap on the text kept, MB (default: the manifest's max_train_mb; 0: no cap)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    try:
        manifest = load_manifest(Path(args.manifest))
        cap = args.max_train_mb if args.max_train_mb is not None else float(manifest.get("max_train_mb", 0))
        build(manifest, Path(args.debs), Path(args.output_dir), args.seed, cap)
    except CorpusError as e:
        sys.exit(f"build_doc_corpus: {e}")


if __name__ == "__main__":
    main()
