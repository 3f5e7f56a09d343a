"""Build a text-classification task offline: Debian package descriptions labelled with their archive section.

    python tools/build_package_task.py --output data/debian_sections         # from this machine's apt lists
    python tools/build_package_task.py --packages Packages.gz --release-file InRelease --output out/
    python tools/build_package_task.py --output data/debian_sections_small --max-sections 8 \\
        --max-train-per-section 40 --max-eval-per-section 10                    # a small version for CPU demos

Fine-tune on it through the user-task path:
    python tools/run_glue.py --model runs/base/model --output runs/base/debian --task-name debian_sections \\
        --train-file data/debian_sections/train.tsv --dev-file data/debian_sections/dev.tsv \\
        --text-columns text --label-column label --labels "$(paste -sd, data/debian_sections/labels.txt)"

Source: the apt lists of the machine (`apt-get indextargets` finds them; `apt-helper cat-file` reads any
compression apt keeps them in), or Packages files given with --packages (plain, .gz, .xz, .bz2; .lz4 and .zst
through apt-helper). A package's text is its description: the synopsis line, followed by the long description when
the lists hold one (older Packages files inline, or a Translation-en list matched by Description-md5). Its label is
its section without the archive area ('contrib/net' -> 'net').

The rules, all deterministic (the same lists give byte-identical outputs):
  * one record per package: records sorted by (package, version, architecture), the first kept;
  * sections with fewer than --min-section-size packages are dropped (listed in metadata.json), then only the
    --max-sections largest are kept when given (ties by name);
  * split by a hash of (--seed, package name): a package keeps its split whatever else is in the lists;
  * --max-*-per-section keep, per section, the packages with the smallest hashes.
Outputs in --output: train/dev/test.tsv (columns package, label, text; or .jsonl with --format jsonl), labels.txt
(one label per line, the label set in index order), metadata.json (release, lists' date, counts, rules, hashes)
and README.md (what it is and its licence).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

from megabert.study.debian_task import (BuildError, Record, SPLITS, apt_index_targets, assign_splits,
                                         choose_sections, long_descriptions, one_per_package, parse_packages,
                                         read_list, release_file_of, release_info)


def write_split(records: list[Record], path: Path, file_format: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if file_format == "jsonl":
            for r in records:
                f.write(json.dumps({"package": r.package, "label": r.section, "text": r.text}, ensure_ascii=False)
                        + "\n")
            return
        f.write("package\tlabel\ttext\n")
        for r in records:
            f.write(f"{r.package}\t{r.section}\t{r.text}\n")  # description_text left no tab or newline


def readme_text(meta: dict) -> str:
    release = meta["release"]
    name = " ".join(x for x in (release.get("Origin"), release.get("Version"), f"({release['Codename']})"
                                if release.get("Codename") else None) if x) or "unknown release"
    counts = meta["counts"]
    return f"""# Debian package sections: a text-classification task

Each row is one binary package of the Debian archive: its description (`text`) and its archive section (`label`,
e.g. `libs`, `python`, `games`). {len(meta['labels'])} classes; {counts['train']} training, {counts['dev']} dev and
{counts['test']} test rows. Built by `tools/build_package_task.py` from apt's package lists of {name}, lists dated
{release.get('Date', meta.get('lists_date', 'unknown'))}; the rules and the exact counts are in `metadata.json`.

Texts: {meta['text_source']}

## Licence

There is no single licence for this data. Each description is written by the maintainers of a Debian package (from
its `debian/control`) and is distributed by Debian under the terms of that package's Debian packaging, stated in
its `debian/copyright` (`/usr/share/doc/<package>/copyright` on a system where it is installed). For packages of the
`main` area these are DFSG-free licences. The section labels are archive metadata assigned by Debian. Keep this
note, and the source (Debian, https://www.debian.org, release and date above), with any copy; check the
individual licences before redistributing the texts beyond research use.
"""


def build(packages: list[Path], release_files: list[Optional[Path]], translation_files: list[Path],
          output: Path, min_section_size: int = 100, max_sections: Optional[int] = None, seed: int = 0,
          dev_fraction: float = 0.1, test_fraction: float = 0.1, max_train_per_section: Optional[int] = None,
          max_eval_per_section: Optional[int] = None, file_format: str = "tsv",
          command: Optional[list[str]] = None) -> dict:
    """Reads the lists, applies the rules, writes the task; returns its metadata."""
    if not packages:
        raise BuildError("no Packages list found; pass --packages FILE (apt-get update fills the apt lists)")
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise BuildError(f"--dev-fraction ({dev_fraction}) and --test-fraction ({test_fraction}) must be >= 0 "
                         f"with a sum below 1")
    translations = long_descriptions(read_list(p) for p in translation_files)
    skipped: collections.Counter = collections.Counter()
    records, sources = [], []
    for path, release_file in zip(packages, release_files):
        text = read_list(path)
        found = parse_packages(text, translations, str(path), skipped)
        records += found
        sources.append({"file": path.name, "records": len(found), "release": release_info(release_file),
                        "sha256": hashlib.sha256(text.encode()).hexdigest()})
    records, duplicates = one_per_package(records)
    sections, dropped = choose_sections(records, min_section_size, max_sections)
    if len(sections) < 2:
        raise BuildError(f"only {len(sections)} section(s) have >= {min_section_size} packages; lower "
                         f"--min-section-size")
    splits = assign_splits(records, sections, seed, dev_fraction, test_fraction, max_train_per_section,
                           max_eval_per_section)
    output.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name in SPLITS:
        path = output / f"{name}.{file_format}"
        write_split(splits[name], path, file_format)
        outputs[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (output / "labels.txt").write_text("".join(f"{s}\n" for s in sections))
    with_long = sum(r.has_long_description for split in splits.values() for r in split)
    meta = {
        "task": "debian package description -> archive section",
        "release": next((s["release"] for s in sources if s["release"]), {}),
        "sources": sources,
        "text_source": (f"the synopsis line, then the long description ({with_long} of "
                        f"{sum(len(v) for v in splits.values())} rows have one)" if with_long else
                        "the one-line synopsis only: these lists hold no long descriptions (Debian ships them in "
                        "Translation-en lists, which apt fetches when Acquire::Languages includes en)"),
        "rules": {"one_record_per_package": "first in (package, version, architecture) order",
                  "min_section_size": min_section_size, "max_sections": max_sections, "seed": seed,
                  "dev_fraction": dev_fraction, "test_fraction": test_fraction,
                  "split": "sha256 of '<seed>:<package>' mapped to [0, 1): test below test_fraction, then dev",
                  "max_train_per_section": max_train_per_section, "max_eval_per_section": max_eval_per_section},
        "labels": sections,
        "counts": {name: len(splits[name]) for name in SPLITS},
        "per_section": {s: {name: sum(r.section == s for r in splits[name]) for name in SPLITS} for s in sections},
        "dropped_sections": dropped,
        "skipped_records": dict(sorted(skipped.items())),
        "duplicate_records": duplicates,
        "outputs": outputs,
        "command": command or [],
    }
    if meta["release"].get("Date"):
        meta["lists_date"] = meta["release"]["Date"]
    (output / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    (output / "README.md").write_text(readme_text(meta))
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for the splits, labels.txt, metadata.json, README.md")
    p.add_argument("--packages", action="append", default=[], help="a Packages list (repeatable); default: "
                   "this machine's apt lists")
    p.add_argument("--release-file", action="append", default=[], help="the InRelease/Release of each --packages "
                   "file, in the same order (release and date in metadata.json)")
    p.add_argument("--translations", action="append", default=[], help="Translation-en lists for long "
                   "descriptions (default with the apt lists: those apt holds)")
    p.add_argument("--min-section-size", type=int, default=100, help="drop sections with fewer packages")
    p.add_argument("--max-sections", type=int, help="then keep only this many of the largest sections")
    p.add_argument("--seed", type=int, default=0, help="salt of the split hash")
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--max-train-per-section", type=int, help="cap the training rows of each section")
    p.add_argument("--max-eval-per-section", type=int, help="cap the dev and test rows of each section")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.packages:
            packages = [Path(p) for p in args.packages]
            if args.release_file and len(args.release_file) != len(packages):
                raise BuildError(f"{len(args.release_file)} --release-file for {len(packages)} --packages; give "
                                 f"one per Packages file, in the same order, or none")
            releases = [Path(r) for r in args.release_file] or [None] * len(packages)
            translations = [Path(t) for t in args.translations]
        else:
            targets = sorted(apt_index_targets("Packages"), key=lambda t: t["Filename"])
            packages = [Path(t["Filename"]) for t in targets]
            releases = [release_file_of(t) for t in targets]
            translations = [Path(t) for t in args.translations] or sorted(
                Path(t["Filename"]) for t in apt_index_targets("Translations") if t.get("Language") == "en")
        meta = build(packages, releases, translations, Path(args.output), args.min_section_size, args.max_sections,
                     args.seed, args.dev_fraction, args.test_fraction, args.max_train_per_section,
                     args.max_eval_per_section, args.format, ["tools/build_package_task.py", *argv])
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(meta['labels'])} sections, " +
          ", ".join(f"{n} {name}" for name, n in meta["counts"].items()) +
          f"; {len(meta['dropped_sections'])} section(s) left out (metadata.json: dropped_sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
