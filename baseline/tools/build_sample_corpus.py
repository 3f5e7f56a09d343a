#!/usr/bin/env python
"""Build the bundled sample corpus (data/sample/) from Debian documentation packages, in C4's JSON-lines layout.

    python tools/build_sample_corpus.py --debs /tmp/debdocs --output-dir data/sample

--debs is a directory holding the .deb files listed in PACKAGES (fetch them with
``apt-get download <name>=<version>``; the script runs that itself when they are missing and apt is available).
Prose is taken from the English HTML manuals: the text of <p>, <li>, <dt>, <dd>, <td> and heading elements,
never code blocks, scripts or navigation. Each HTML page becomes one or more documents of at most ~250 words
(split at paragraph boundaries), like C4's web pages. Documents are de-duplicated, shuffled with a fixed seed
and capped at --max-train-mb of text; the loader carves train/valid/test out of this one shard (data.split).
Output is byte-for-byte reproducible from the same packages (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import html.parser
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# (package, version, HTML root inside the package, licence) -- the exact sources of data/sample.
PACKAGES = [
    ("debian-handbook", "11.20220922", "usr/share/doc/debian-handbook/html/en-US", "GPL-2.0+ or CC-BY-SA-3.0"),
    ("debian-reference-en", "2.100", "usr/share/debian-reference", "GPL-2+"),
    ("developers-reference", "12.18", "usr/share/developers-reference", "GPL-2 / MIT-style"),
    ("maint-guide", "1.2.53", "usr/share/doc/maint-guide/html", "GPL-2.0+ or MIT"),
    ("postgresql-doc-15", "15.20-0+deb12u1", "usr/share/doc/postgresql-doc-15/html", "PostgreSQL (BSD-style)"),
    ("python3.11-doc", "3.11.2-6+deb12u9", "usr/share/doc/python3.11/html", "PSF-2.0 (docs), 0BSD (examples)"),
    ("sqlite3-doc", "3.40.1-2+deb12u2", "usr/share/doc/sqlite3", "public domain"),
]
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


def ensure_debs(debs: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    for name, version, _, _ in PACKAGES:
        if not list(debs.glob(f"{name}_*.deb")):
            subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debs", required=True, help="directory with (or for) the .deb files")
    p.add_argument("--output-dir", default="data/sample")
    p.add_argument("--max-train-mb", type=float, default=12.0, help="cap on uncompressed train text (MB)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    debs, out = Path(args.debs), Path(args.output_dir)
    ensure_debs(debs)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, root, _ in PACKAGES:
            deb = sorted(debs.glob(f"{name}_{version}_*.deb"))
            if not deb:
                sys.exit(f"missing {name}_{version}_*.deb in {debs}")
            target = Path(tmp) / name
            subprocess.run(["dpkg-deb", "-x", str(deb[0]), str(target)], check=True)
            pages = sorted((target / root).rglob("*.html"))
            count = 0
            for page in pages:
                parser = ProseExtractor()
                parser.feed(page.read_text(encoding="utf-8", errors="replace"))
                parser.close()
                stamp = dt.datetime.fromtimestamp(page.stat().st_mtime, dt.timezone.utc)
                rel = page.relative_to(target)
                for i, text in enumerate(documents_of_page(parser.paragraphs)):
                    records.append({"text": text, "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    "url": f"file:///{rel}" + (f"#part{i}" if i else "")})
                    count += 1
            print(f"{name} {version}: {len(pages)} pages -> {count} documents", file=sys.stderr)
    # De-duplicate (the handbook repeats boilerplate pages), shuffle, split, cap.
    seen, unique = set(), []
    for r in records:
        if r["text"] not in seen:
            seen.add(r["text"])
            unique.append(r)
    random.Random(args.seed).shuffle(unique)
    train = unique
    budget, kept = args.max_train_mb * 1e6, []
    for r in train:
        budget -= len(r["text"].encode())
        if budget < 0:
            break
        kept.append(r)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("c4-train.00000-of-00001.json.gz", kept),):
        path = out / name
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                    compresslevel=9) as gz:
            for r in rows:
                gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
        words = sum(len(r["text"].split()) for r in rows)
        print(f"{path}: {len(rows)} documents, {words} words, {path.stat().st_size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
