"""Debian package descriptions labelled with their archive section: reading the apt lists and the task's rules.

What tools/build_package_task.py (megabert/cli/build_package_task.py) turns into a downstream task for the study:
the lists are read (`apt-helper cat-file` for any compression apt keeps them in), one record per package, its
text the description (synopsis and, where the lists hold one, the long description) and its label the section
without the archive area; sections too small are dropped, and the split comes from a hash of the package name,
so a package keeps its split whatever else is in the lists. Every rule is deterministic.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import hashlib
import lzma
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

APT_HELPER = "/usr/lib/apt/apt-helper"
SPLITS = ("train", "dev", "test")
RELEASE_FIELDS = ("Origin", "Label", "Suite", "Version", "Codename", "Date", "Description")


class BuildError(ValueError):
    """The lists cannot be read or give no usable task; the message names the file and the fix."""


@dataclass
class Record:
    package: str
    version: str
    architecture: str
    section: str
    text: str
    has_long_description: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Reading the lists
# ---------------------------------------------------------------------------------------------------------------


def read_list(path: str | Path) -> str:
    """The text of a list file in any compression apt keeps (apt-helper), or plain/.gz/.xz/.bz2 without apt."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"list file {path} does not exist")
    openers = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}
    if path.suffix in openers:
        with openers[path.suffix](path, "rt", encoding="utf-8") as f:
            return f.read()
    if path.suffix in (".lz4", ".zst"):
        if not Path(APT_HELPER).is_file():
            raise BuildError(f"{path} is {path.suffix[1:]}-compressed and {APT_HELPER} is missing; decompress it "
                             f"first (e.g. {path.suffix[1:]} -d {path}) and pass the plain file")
        done = subprocess.run([APT_HELPER, "cat-file", str(path)], capture_output=True)
        if done.returncode != 0:
            raise BuildError(f"apt-helper cat-file {path} failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode("utf-8")
    return path.read_text(encoding="utf-8")


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as dicts; a continuation line (leading space or tab) extends the previous field with
    '\\n' + the line as written."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t":
            if key is not None:
                fields[key] += "\n" + line
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    if fields:
        yield fields


def description_text(synopsis: str, long_lines: str = "") -> str:
    """Synopsis, then the long description with its deb822 markup removed (' .' paragraph separators), all on one
    line with single spaces (a TSV field)."""
    parts = [synopsis]
    for line in long_lines.splitlines():
        line = line.strip()
        if line and line != ".":
            parts.append(line)
    return re.sub(r"\s+", " ", " ".join(parts)).strip()


def long_descriptions(translation_texts: Iterable[str]) -> dict[tuple[str, str], str]:
    """(package, Description-md5) -> long description lines, from Translation-en lists."""
    out = {}
    for text in translation_texts:
        for s in stanzas(text):
            full = s.get("Description-en", "")
            if "Package" in s and "Description-md5" in s and "\n" in full:
                out[(s["Package"], s["Description-md5"])] = full.split("\n", 1)[1]
    return out


def parse_packages(text: str, translations: dict[tuple[str, str], str], where: str,
                   skipped: collections.Counter) -> list[Record]:
    records = []
    for s in stanzas(text):
        if "Package" not in s:
            skipped["no_package_field"] += 1
            continue
        section = s.get("Section", "").strip()
        description = s.get("Description", "")
        if not section:
            skipped["no_section"] += 1
            continue
        if not description.strip():
            skipped["no_description"] += 1
            continue
        synopsis, _, inline_long = description.partition("\n")
        long_lines = inline_long or translations.get((s["Package"], s.get("Description-md5", "")), "")
        records.append(Record(s["Package"], s.get("Version", ""), s.get("Architecture", ""),
                              section.rsplit("/", 1)[-1], description_text(synopsis, long_lines),
                              bool(long_lines.strip())))
    if not records:
        raise BuildError(f"{where}: no package record with a Section and a Description; is it a Packages file?")
    return records


def release_info(path: Optional[str | Path]) -> dict[str, str]:
    """Origin, suite, version, codename and date from an InRelease/Release file (the signature is not checked:
    apt did that when it fetched the lists)."""
    if path is None or not Path(path).is_file():
        return {}
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    body = text.split("-----BEGIN PGP SIGNATURE-----")[0]
    fields = next(stanzas(body.split("\n\n", 1)[1] if body.startswith("-----BEGIN PGP SIGNED") else body), {})
    return {k: fields[k] for k in RELEASE_FIELDS if k in fields}


def apt_index_targets(created_by: str) -> list[dict[str, str]]:
    """This machine's apt lists of one kind ('Packages', 'Translations') as apt-get indextargets describes them."""
    try:
        done = subprocess.run(["apt-get", "indextargets", f"Created-By: {created_by}"], capture_output=True,
                              text=True)
    except FileNotFoundError:
        raise BuildError("apt-get is not available; pass Packages files with --packages") from None
    if done.returncode != 0:
        raise BuildError(f"apt-get indextargets failed: {done.stderr.strip()}")
    return [t for t in stanzas(done.stdout) if Path(t.get("Filename", "")).is_file()]


def release_file_of(target: dict[str, str]) -> Optional[Path]:
    """The InRelease (or Release) list beside a Packages list: apt names it after the URI of its dists/ dir."""
    name = Path(target["Filename"]).name
    codename = target.get("Release") or target.get("Codename", "")
    marker = f"_dists_{codename}_"
    if marker not in name:
        return None
    for last in ("InRelease", "Release"):
        candidate = Path(target["Filename"]).with_name(name[:name.index(marker) + len(marker)] + last)
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------


def split_hash(seed: int, package: str) -> float:
    """A number in [0, 1) fixed by (seed, package): the package's split and its rank within a capped section."""
    return int(hashlib.sha256(f"{seed}:{package}".encode()).hexdigest()[:16], 16) / 2 ** 64


def one_per_package(records: list[Record]) -> tuple[list[Record], int]:
    """The first record of each package in (package, version, architecture) order; and how many were dropped."""
    kept: dict[str, Record] = {}
    for r in sorted(records, key=lambda r: (r.package, r.version, r.architecture)):
        kept.setdefault(r.package, r)
    return [kept[p] for p in sorted(kept)], len(records) - len(kept)


def choose_sections(records: list[Record], min_size: int, max_sections: Optional[int]
                    ) -> tuple[list[str], dict[str, int]]:
    """(kept sections sorted by name, dropped section -> its package count)."""
    counts = collections.Counter(r.section for r in records)
    large = sorted((s for s, n in counts.items() if n >= min_size), key=lambda s: (-counts[s], s))
    if max_sections is not None:
        large = large[:max_sections]
    dropped = {s: n for s, n in sorted(counts.items()) if s not in large}
    return sorted(large), dropped


def assign_splits(records: list[Record], sections: list[str], seed: int, dev_fraction: float,
                  test_fraction: float, max_train: Optional[int], max_eval: Optional[int]) -> dict[str, list[Record]]:
    keep = set(sections)
    by_split_section: dict[tuple[str, str], list[tuple[float, Record]]] = collections.defaultdict(list)
    for r in records:
        if r.section not in keep:
            continue
        h = split_hash(seed, r.package)
        split = "test" if h < test_fraction else "dev" if h < test_fraction + dev_fraction else "train"
        by_split_section[(split, r.section)].append((split_hash(seed + 1, r.package), r))
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for (split, _), items in by_split_section.items():
        cap = max_train if split == "train" else max_eval
        items.sort(key=lambda item: (item[0], item[1].package))
        out[split] += [r for _, r in (items if cap is None else items[:cap])]
    for split in SPLITS:
        out[split].sort(key=lambda r: r.package)
    missing = sorted(keep - {r.section for r in out["train"]})
    if missing:
        raise BuildError(f"section(s) {missing} have no training package; raise --min-section-size or lower "
                         f"--dev-fraction/--test-fraction")
    return out
