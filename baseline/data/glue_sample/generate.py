"""Writes the tiny GLUE-format sample under data/glue_sample/ (deterministic; rerun to regenerate).

Every task has GLUE's real file names and column layouts, and a signal a small model learns in seconds:
sentiment words (SST-2), doubled or dropped words (CoLA), shared or swapped subjects (MRPC, QQP, QNLI),
negations and swapped objects (MNLI, RTE), and word overlap as the similarity score (STS-B). It is for
tests and demos of the pipeline, not a benchmark.

    python data/glue_sample/generate.py
"""

from __future__ import annotations

import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent

SUBJECTS = ["the director", "the actor", "the critic", "my sister", "the old farmer", "a young student",
            "the chef", "the pilot", "our teacher", "the nurse", "the senator", "a local artist", "the engineer",
            "the coach", "the writer", "a tired doctor"]
OBJECTS = ["the report", "a new song", "the old bridge", "the garden", "the letter", "a small boat",
           "the museum", "the contract", "a red bicycle", "the kitchen", "the stadium", "a long novel"]
VERBS = ["visited", "painted", "described", "repaired", "praised", "sold", "photographed", "studied"]
POSITIVE = ["wonderful", "brilliant", "delightful", "moving", "charming", "superb", "funny", "beautiful"]
NEGATIVE = ["boring", "awful", "dull", "clumsy", "tedious", "terrible", "messy", "pointless"]
TOPICS = ["the film", "this movie", "the story", "the acting", "the script", "the ending", "the soundtrack"]
PLACES = ["in paris", "near the river", "last winter", "on monday", "after the storm", "in the city"]


def write(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(x) for x in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def clause(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)


def sst2(rng: random.Random, n: int) -> list[list]:
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = POSITIVE if label else NEGATIVE
        templates = ["{t} was {a} .", "{t} is {a} and {b} .", "i found {t} {a} , really {b} .",
                     "what a {a} experience ; {t} felt {b} ."]
        rows.append([rng.choice(templates).format(t=rng.choice(TOPICS), a=rng.choice(words), b=rng.choice(words)),
                     label])
    return rows


def cola(rng: random.Random, n: int) -> list[list]:
    rows = []
    for i in range(n):
        s, v, o = clause(rng)
        words = f"{s} {v} {o} {rng.choice(PLACES)} .".split()
        label = rng.randint(0, 1)
        if not label:  # ungrammatical: a doubled word or a dropped verb
            if rng.random() < 0.5:
                k = rng.randrange(len(words) - 1)
                words.insert(k, words[k])
            else:
                words.remove(v)
        rows.append([f"gj0{i % 5}", label, "" if label else "*", " ".join(words)])
    return rows


def mrpc(rng: random.Random, n: int) -> list[list]:
    rows = []
    for i in range(n):
        s, v, o = clause(rng)
        place = rng.choice(PLACES)
        a = f"{s} {v} {o} {place} ."
        label = rng.randint(0, 1)
        if label:
            b = f"{place} , {s} {v} {o} ."
        else:
            b = f"{rng.choice([x for x in SUBJECTS if x != s])} {v} {rng.choice([x for x in OBJECTS if x != o])} ."
        rows.append([label, 100000 + 2 * i, 100001 + 2 * i, a, b])
    return rows


def qqp(rng: random.Random, n: int) -> list[list]:
    rows = []
    for i in range(n):
        o, o2 = rng.sample(OBJECTS, 2)
        label = rng.randint(0, 1)
        q1 = f"how can i find {o} {rng.choice(PLACES)} ?"
        q2 = f"where is {o} {rng.choice(PLACES)} ?" if label else f"how can i find {o2} {rng.choice(PLACES)} ?"
        rows.append([i, 2 * i + 1, 2 * i + 2, q1, q2, label])
    return rows


def stsb(rng: random.Random, n: int, genre: str) -> list[list]:
    rows = []
    for i in range(n):
        s, v, o = clause(rng)
        a = [s, v, o]
        b = list(a)
        changed = rng.randint(0, 3)
        pools = [SUBJECTS, VERBS, OBJECTS]
        for k in rng.sample(range(3), changed):
            b[k] = rng.choice([x for x in pools[k] if x != a[k]])
        score = round(5.0 * (3 - changed) / 3 + rng.uniform(-0.3, 0.3), 3)
        score = min(5.0, max(0.0, score))
        rows.append([i, genre, "2015", "0001", f"{i:04d}", "none", "none", " ".join(a) + " .", " ".join(b) + " .",
                     f"{score:.3f}"])
    return rows


def nli_pair(rng: random.Random, three_way: bool) -> tuple[str, str, str]:
    s, v, o = clause(rng)
    premise = f"{s} {v} {o} {rng.choice(PLACES)} ."
    kind = rng.choice(["entailment", "contradiction", "neutral"] if three_way else ["entailment", "not_entailment"])
    if kind == "entailment":
        hypothesis = f"{s} {v} {o} ."
    elif kind == "contradiction" or (kind == "not_entailment" and rng.random() < 0.5):
        hypothesis = f"{s} never {v} {o} ."
    else:
        hypothesis = f"{s} {v} {rng.choice([x for x in OBJECTS if x != o])} ."
    return premise, hypothesis, kind


def mnli(rng: random.Random, n: int, genres: list[str], dev: bool) -> list[list]:
    rows = []
    for i in range(n):
        p, h, label = nli_pair(rng, three_way=True)
        parse = lambda text: "( " + " ".join(text.split()) + " )"
        extra = [label] * 5 if dev else [label]
        rows.append([i, 1000 + i, f"{1000 + i}{label[0]}", rng.choice(genres), parse(p), parse(h), parse(p),
                     parse(h), p, h, *extra, label])
    return rows


def mnli_header(dev: bool) -> list[str]:
    labels = [f"label{k}" for k in range(1, 6)] if dev else ["label1"]
    return ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *labels, "gold_label"]


def qnli(rng: random.Random, n: int) -> list[list]:
    rows = []
    for i in range(n):
        s, v, o = clause(rng)
        label = rng.choice(["entailment", "not_entailment"])
        question = f"who {v} {o} ?"
        other = rng.choice([x for x in OBJECTS if x != o])
        sentence = f"{s} {v} {o if label == 'entailment' else other} {rng.choice(PLACES)} ."
        rows.append([i, question, sentence, label])
    return rows


def rte(rng: random.Random, n: int) -> list[list]:
    return [[i, *nli_pair(rng, three_way=False)] for i in range(n)]


def main() -> None:
    rng = random.Random(1234)
    n_train, n_dev = 240, 80
    write(ROOT / "SST-2/train.tsv", ["sentence", "label"], sst2(rng, n_train))
    write(ROOT / "SST-2/dev.tsv", ["sentence", "label"], sst2(rng, n_dev))
    write(ROOT / "CoLA/train.tsv", None, cola(rng, n_train))
    write(ROOT / "CoLA/dev.tsv", None, cola(rng, n_dev))
    mrpc_header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write(ROOT / "MRPC/train.tsv", mrpc_header, mrpc(rng, n_train))
    write(ROOT / "MRPC/dev.tsv", mrpc_header, mrpc(rng, n_dev))
    qqp_header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write(ROOT / "QQP/train.tsv", qqp_header, qqp(rng, n_train))
    write(ROOT / "QQP/dev.tsv", qqp_header, qqp(rng, n_dev))
    sts_header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                  "score"]
    write(ROOT / "STS-B/train.tsv", sts_header, stsb(rng, n_train, "main-captions"))
    write(ROOT / "STS-B/dev.tsv", sts_header, stsb(rng, n_dev, "main-news"))
    write(ROOT / "MNLI/train.tsv", mnli_header(False), mnli(rng, 300, ["fiction", "government", "travel"], False))
    write(ROOT / "MNLI/dev_matched.tsv", mnli_header(True), mnli(rng, n_dev, ["fiction", "government"], True))
    write(ROOT / "MNLI/dev_mismatched.tsv", mnli_header(True), mnli(rng, n_dev, ["letters", "verbatim"], True))
    write(ROOT / "QNLI/train.tsv", ["index", "question", "sentence", "label"], qnli(rng, n_train))
    write(ROOT / "QNLI/dev.tsv", ["index", "question", "sentence", "label"], qnli(rng, n_dev))
    write(ROOT / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], rte(rng, n_train))
    write(ROOT / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], rte(rng, n_dev))


if __name__ == "__main__":
    main()
