"""The data benchmarks run end to end (tiny settings) and report what they claim to measure."""

from __future__ import annotations

import json

from .conftest import write_jsonl


def test_bench_dataloader_reports_samples_per_second(tmp_path, sample_prefix, vocab_file):
    import bench_dataloader

    out = tmp_path / "dl.json"
    bench_dataloader.main(["--data-path", sample_prefix, "--vocab-file", vocab_file, "--seconds", "0.2",
                           "--micro-batch", "32", "--workers", "0", "--modes", "document", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["samples_per_s"] > 0 for r in rows)
    assert {r["whole_word"] for r in rows} == {False, True}


def test_bench_preprocess_compares_against_raw_encode(tmp_path, sample_texts, vocab_file):
    import bench_preprocess

    src = write_jsonl(tmp_path / "c.json.gz", [{"text": t} for t in sample_texts[:100]])
    out = tmp_path / "pre.json"
    bench_preprocess.main(["--input", str(src), "--vocab-file", vocab_file, "--workers", "1", "--repeats", "1",
                           "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["raw"]["tokens"] == row["preprocess"]["tokens"] > 0  # same text, same tokens
    assert row["ratio"] > 0


def test_bench_handover_times_both_hand_overs_of_a_staged_micro_batch(tmp_path, sample_prefix, vocab_file):
    import bench_handover

    result = bench_handover.main(["--config", str(bench_handover.REPO / "configs" / "tiny.json"), "--micro_batch_size", "8", "--batches", "2",
                                  "--rounds", "1", "--fill-seconds", "0.2", "--data.data_path",
                                  json.dumps([sample_prefix]), "--data.vocab_file", vocab_file,
                                  "--data.cache_dir", str(tmp_path / "cache")])
    assert set(result) == set(bench_handover.HANDOVERS)
    assert all(r["wall_ms"] > 0 and r["cpu_ms"] >= 0 for r in result.values())
