"""A dependency-free English sentence splitter for ``--split-sentences`` (no NLTK data download needed).

Splits after '.', '!' or '?' (optionally followed by closing quotes/brackets) when whitespace and an upper-case
letter, digit or opening quote follow, except after common abbreviations and single initials. Newlines that
separate paragraphs always end a sentence. Good enough for sentence-level datasets; exactness is not needed.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "fig", "no",
                  "vol", "inc", "ltd", "co", "corp", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun",
                  "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "al"}
_BOUNDARY = re.compile(r"""([.!?]+["')\]]*)\s+(?=["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    out: list[str] = []
    for para in re.split(r"\n\s*\n|\n", text):
        para = para.strip()
        if not para:
            continue
        start = 0
        for m in _BOUNDARY.finditer(para):
            end = m.end(1)
            word = para[start:m.start(1)].rsplit(None, 1)[-1].lower() if para[start:m.start(1)].strip() else ""
            if m.group(1).startswith(".") and (word.rstrip(".") in _ABBREVIATIONS or len(word) == 1):
                continue
            out.append(para[start:end].strip())
            start = m.end()
        tail = para[start:].strip()
        if tail:
            out.append(tail)
    return out
