"""tools/preprocess_data.py: token fidelity, worker invariance, options, bad input per reason, atomic outputs."""

from __future__ import annotations

import functools
import gzip
import json
import os
import signal

import numpy as np
import pytest

from megabert.data import IndexedDataset, load_tokenizer

from .conftest import preprocess, write_jsonl

WP = ["--tokenizer-type", "BertWordPieceLowerCase"]


def _records(texts):
    return [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.org/{i}"}
            for i, t in enumerate(texts)]


def test_tokens_equal_the_tokenizer_output_across_gzip_plain_and_globs(tmp_path, sample_texts, vocab_file):
    texts = sample_texts[:60]
    write_jsonl(tmp_path / "c4-train.00000-of-00002.json.gz", _records(texts[:30]))
    write_jsonl(tmp_path / "c4-train.00001-of-00002.json", _records(texts[30:]))
    summary = preprocess(["--input", str(tmp_path / "c4-train.*"), "--output-prefix", str(tmp_path / "out"),
                          *WP, "--vocab-file", vocab_file])
    ds = IndexedDataset(tmp_path / "out_text_document")
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert ds.num_documents == len(texts) == summary["documents"] and ds.dtype == np.uint16
    for j, text in enumerate(texts):
        assert ds.document(j).tolist() == tok.encode(text)
    assert summary["tokens"] == int(ds.sequence_lengths.sum())


def test_output_is_identical_for_one_and_two_workers(tmp_path, sample_texts, vocab_file):
    src = write_jsonl(tmp_path / "in.json.gz", _records(sample_texts[:200]))
    for workers in ("1", "2"):
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / f"w{workers}"), *WP, "--vocab-file",
                    vocab_file, "--workers", workers, "--chunk-lines", "16"])
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == (tmp_path / f"w2_text_document{ext}").read_bytes()


def test_sentence_split_eod_and_several_json_keys(tmp_path, vocab_file):
    rows = [{"text": "The cat sat. The dog ran! Did it?", "title": "Pets"},
            {"text": "One sentence only", "title": "Single"}]
    src = write_jsonl(tmp_path / "in.json", rows)
    preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file,
                "--json-keys", "text", "title", "--split-sentences", "--append-eod"])
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    text = IndexedDataset(tmp_path / "o_text_sentence")
    assert text.document_indices.tolist() == [0, 3, 4]  # three sentences, then one
    assert text[0].tolist() == tok.encode("The cat sat.")
    assert text[2].tolist() == tok.encode("Did it?") + [tok.sep_id]  # EOD closes the document
    title = IndexedDataset(tmp_path / "o_title_sentence")
    assert title.document(1).tolist() == tok.encode("Single") + [tok.sep_id]


def test_sentencepiece_and_tokenizer_json_models(tmp_path, sample_texts, vocab_file):
    from megabert.cli import train_tokenizer

    corpus = write_jsonl(tmp_path / "corpus.json.gz", _records(sample_texts[:300]))
    train_tokenizer.main(["--input", str(corpus), "--type", "sentencepiece", "--vocab-size", "500",
                          "--output-dir", str(tmp_path)])
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "sp"), "--tokenizer-type",
                "SentencePieceTokenizer", "--tokenizer-model", str(tmp_path / "spm.model")])
    sp = load_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / "spm.model"))
    assert sp.vocab_size % 64 == 0 and sp.pad_id == 0
    assert IndexedDataset(tmp_path / "sp_text_document").document(3).tolist() == sp.encode(sample_texts[3])
    # A tokenizer.json (here: our WordPiece saved by `tokenizers`) through --tokenizer-type HuggingFaceTokenizer.
    load_tokenizer("BertWordPieceLowerCase", vocab_file)._tok.save(str(tmp_path / "tokenizer.json"))
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "hf"), "--tokenizer-type",
                "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "tokenizer.json")])
    assert (IndexedDataset(tmp_path / "hf_text_document").tokens.tolist()
            == IndexedDataset(_wp(tmp_path, corpus, vocab_file)).tokens.tolist())


def _wp(tmp_path, corpus, vocab_file):
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "wp"), *WP, "--vocab-file", vocab_file])
    return tmp_path / "wp_text_document"


def _bad_input(tmp_path):
    """One file with a sample of every bad-line class, and one truncated gzip."""
    lines = [json.dumps({"text": "good line one"}), "{not json", json.dumps({"url": "no text key"}),
             json.dumps({"text": None}), json.dumps({"text": "   "}), b'{"text": "caf\xe9 latin-1"}',
             json.dumps(["a", "list"]), json.dumps({"text": "\u0000\u0001"}), "",
             json.dumps({"text": "x", "meta": "m" * 5000}), json.dumps({"text": "long " * 600}),
             json.dumps({"text": "good two"})]
    write_jsonl(tmp_path / "a.json", lines)
    good = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    (tmp_path / "b.json.gz").write_bytes(good[: len(good) // 2])
    return [str(tmp_path / "a.json"), str(tmp_path / "b.json.gz")]


def test_every_bad_input_class_is_counted_and_the_run_continues(tmp_path, vocab_file):
    files = _bad_input(tmp_path)
    summary = preprocess(["--input", *files, "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file",
                          vocab_file, "--max-line-bytes", "4096", "--max-document-chars", "2000"])
    assert summary["skipped"] == {"malformed_json": 2, "missing_key": 2, "empty_text": 2, "non_utf8": 1,
                                  "truncated_gzip": 1, "oversize_line": 1, "oversize_document": 1}
    ds = IndexedDataset(tmp_path / "o_text_document")
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert ds.document(0).tolist() == tok.encode("good line one")
    assert ds.document(1).tolist() == tok.encode("good two")
    assert 2 < ds.num_documents < 200 + 2  # the complete lines before the gzip damage are kept


def test_merge_concatenates_shards(tmp_path, sample_texts, vocab_file):
    from megabert.cli import merge_datasets

    for i in range(3):
        src = write_jsonl(tmp_path / f"s{i}.json", _records(sample_texts[i * 10:(i + 1) * 10]))
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "shards" / f"s{i}"), *WP, "--vocab-file",
                    vocab_file])
    assert merge_datasets.main(["--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "all")]) == 0
    merged, tok = IndexedDataset(tmp_path / "all"), load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert merged.num_documents == 30
    for j in (0, 9, 10, 29):
        assert merged.document(j).tolist() == tok.encode(sample_texts[j])


def test_sentence_splitter_keeps_abbreviations_and_numbers_together():
    from megabert.data.sentences import split_sentences

    text = 'Dr. Smith left at 3.30 p.m. yesterday. He said "Hello!" Then left.\nSee e.g. Fig. 3? Yes.'
    assert split_sentences(text) == ["Dr. Smith left at 3.30 p.m. yesterday.", 'He said "Hello!"', "Then left.",
                                     "See e.g. Fig. 3?", "Yes."]


def _gzip_with_a_huge_line(path, text_bytes: int) -> None:
    """A good line, one line of ``text_bytes`` characters of text (compresses to almost nothing), a good line."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(json.dumps({"text": "good one"}).encode() + b"\n")
        f.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(text_bytes >> 20):
            f.write(block)
        f.write(b'"}\n' + json.dumps({"text": "good two"}).encode() + b"\n")


@pytest.mark.parametrize("cap", [None, 1 << 20], ids=["default cap", "1 MiB cap"])
def test_a_huge_line_is_skipped_and_counted_without_holding_it_in_memory(tmp_path, vocab_file, cap):
    """A 48 MB line is counted as oversize_line; the run's peak Python memory follows the cap, not the line."""
    import tracemalloc

    from megabert.data.jsonl import MAX_LINE_BYTES

    src = tmp_path / "huge.json.gz"
    _gzip_with_a_huge_line(src, 48 << 20)
    argv = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file]
    argv += ["--max-line-bytes", str(cap)] if cap else []
    tracemalloc.start()
    try:
        summary = preprocess(argv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["skipped"]["oversize_line"] == 1 and summary["documents"] == 2
    limit = cap or MAX_LINE_BYTES  # a bounded read holds at most one piece of the cap's size (and its copy)
    assert peak < 2 * limit + (6 << 20), f"peak {peak / 2**20:.1f} MiB for a cap of {limit / 2**20:.0f} MiB"


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(condition, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _start_preprocess(tmp_path, vocab_file, sample_texts):
    """tools/preprocess_data.py with 2 workers, returned once both are tokenizing a chunk that takes them seconds
    (~6 MB of text in two chunks: a killed parent leaves them mid-task, not waiting for one)."""
    import subprocess
    import sys

    from .conftest import REPO

    src = tmp_path / "big.json"
    line = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in sample_texts[:200])
    copies = max(2, (6 << 20) // len(line))
    src.write_bytes(line * copies)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Ctrl-C as in a terminal: a test run started in the background inherits SIGINT ignored, and so would the child
    preexec = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
                             "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file, "--workers",
                             "2", "--chunk-lines", str(copies * 200 // 2), "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=preexec)
    assert _wait_until(lambda: len(_children(proc.pid)) == 2, 30), "the workers did not start"
    workers = _children(proc.pid)
    busy = 30 * os.sysconf("SC_CLK_TCK") // 100  # 0.3 s of CPU each: past start-up, inside their chunk
    assert _wait_until(lambda: all(_cpu_ticks(w) >= busy for w in workers), 30), "the workers got no work"
    return proc, workers


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_workers_die_with_a_preprocess_killed_by_sigkill(tmp_path, vocab_file, sample_texts):
    proc, workers = _start_preprocess(tmp_path, vocab_file, sample_texts)
    try:
        proc.kill()
        proc.wait(10)
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 2.0), "workers outlived their parent"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_a_preprocess_with_its_workers_and_leaves_nothing(tmp_path, vocab_file, sample_texts,
                                                                             name):
    sig = getattr(signal, name)
    proc, workers = _start_preprocess(tmp_path, vocab_file, sample_texts)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig and f"stopped by {name}; no output written".encode() in err, err
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 2.0), "workers outlived their parent"
        assert not list(tmp_path.glob("o_*")), "temporaries or outputs left behind"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("use_prctl", [True, False], ids=["parent-death signal", "polling fallback"])
def test_a_bound_worker_dies_within_a_second_of_its_parent(use_prctl):
    import subprocess
    import sys
    import textwrap

    from .conftest import REPO

    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from megabert.cli import preprocess_data
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            preprocess_data.bind_to_parent(parent, use_prctl={use_prctl})
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(proc.stdout.readline())
    try:
        import time

        time.sleep(0.3)  # the child has armed its binding
        assert _alive(child)
        proc.kill()
        proc.wait(10)
        assert _wait_until(lambda: not _alive(child), 1.5), "the bound child outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
