"""benchmarks/host_time.py runs end to end on a CPU (tiny models): per-phase host times that add up, a back-to-back
step time and the profiler's CPU-op table, for megabert compiled and Hugging Face."""

from benchmarks import host_time


def test_host_time_smoke(capsys):
    results = host_time.main(["--tiny", "--device", "cpu", "--systems", "megabert-compiled", "hf-eager",
                              "--repeats", "2", "--steps", "2", "--warmup", "1", "--top", "5"])
    assert [(r["system"], r["dist"]) for r in results] == [("megabert-compiled", "c4-128"), ("hf-eager", "c4-128")]
    for r in results:
        assert all(r[p] > 0 for p in host_time.PHASES) and r["back_to_back_ms"] > 0
        assert abs(sum(r[p] for p in host_time.PHASES) - r["host"]) < 0.5 * r["host"]  # medians of each phase
        assert r["wall"] >= r["host"] and "Self CPU" in r["top_cpu_ops"]  # each synced step: wall >= host
    assert "megabert-compiled c4-128: host ms, synced: inputs" in capsys.readouterr().out
