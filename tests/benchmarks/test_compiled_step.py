"""benchmarks/compiled_step.py runs end to end (tiny models, CPU, a few steps): checks, rows, table, JSON; and its
profile breakdown sorts device activity into GEMM, attention, other and idle time; benchmarks/step_profile.py's
kernel table groups it by name."""

import json
import os

from benchmarks import compiled_step as bench


def test_compiled_step_smoke(tmp_path, capsys):
    # in-process (a subprocess would import torch again); HF eager: one compilation less (the same step code)
    out = tmp_path / "compiled_step.json"
    bench.main(["--tiny", "--device", "cpu", "--models", "base", "--dists", "c4-128", "--systems", "megabert-eager",
                "megabert-compiled", "hf-eager", "--check-steps", "3",
                "--check-layers", "1", "--steps", "1", "--warmup", "1", "--json-out", str(out)])
    printed = capsys.readouterr().out
    assert "### Checks" in printed and "### Training step" in printed
    report = json.loads(out.read_text())
    assert all(check["passed"] for check in report["checks"]), report["checks"]
    judged = {c["check"].split(", ")[-1]: c.get("yardstick") for c in report["checks"] if "trajectory" in c["check"]}
    assert judged == {"eager bf16 (logits) vs eager fp32 (logits)": None,  # the yardstick of the fused loss
                      "eager bf16 (loss) vs eager fp32 (logits)": "eager bf16 (logits)",
                      "compiled bf16 (loss) vs eager fp32 (logits)": "eager bf16 (loss)"}  # one change each
    assert [r["system"] for r in report["rows"]] == ["megabert-eager", "megabert-compiled", "hf-eager"]
    assert all(r["real_tokens_per_s"] > 0 and r["step_ms"] > 0 and 0 < r["mfu"] for r in report["rows"])
    assert set(report["ratios_vs_hf_compile"].values()) == {None}  # no hf-compile row to compare with
    assert report["skipped"] == [] and report["complete"]  # every row asked for ran, within the budget
    assert report["environment"]["commit"] and report["environment"]["host"]  # what benchmarks.pool_runs checks


def _kernel(name, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_profile_breakdown_sorts_kernels_and_counts_idle_time():
    events = [_kernel("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_TNT", 0, 40),
              _kernel("_flash_attn_fwd_kernel", 50, 10),
              _kernel("triton_per_fused_native_layer_norm_0", 60, 5),
              {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 65, "dur": 5},
              _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 100, 20),
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 500}]
    got = bench.kernel_breakdown(events, steps=2)
    assert got["gemm_ms"] == 0.030 and got["attention_ms"] == 0.005 and got["other_ms"] == 0.005
    assert got["idle_ms"] == (10 + 30) / 2 / 1e3 and got["span_ms"] == 0.060 and got["kernels_per_step"] == 2
    assert bench.kernel_category("pytorch_flash::flash_bwd_kernel") == "attention"
    assert bench.kernel_category("void at::native::vectorized_elementwise_kernel") == "other"


def test_compiled_variants_trace_with_their_kernel_choice_and_restore_it(tmp_path, monkeypatch):
    seen = []
    real = bench.compile_model

    def recording_compile(model, **kwargs):
        seen.append(os.environ.get("MEGABERT_COMPILE_TRITON_OPS"))
        return real(model, **kwargs)

    monkeypatch.setattr(bench, "compile_model", recording_compile)
    monkeypatch.setenv("MEGABERT_COMPILE_TRITON_OPS", "1")
    bench.main(["--tiny", "--device", "cpu", "--models", "base", "--dists", "c4-128", "--no-checks", "--systems",
                "megabert-compiled", "megabert-compiled-inductor-ops", "--steps", "1", "--warmup", "1",
                "--json-out", str(tmp_path / "out.json")])
    assert seen == ["1", "0"]  # the default system keeps the caller's choice
    assert os.environ["MEGABERT_COMPILE_TRITON_OPS"] == "1"


def test_step_profile_groups_device_activity_by_name_per_step():
    from benchmarks.step_profile import kernel_table

    events = [_kernel("triton_poi_fused_gelu_mul_0", 0, 30), _kernel("triton_poi_fused_gelu_mul_0", 40, 50),
              _kernel("nvjet_sm90_tst_128x256_TNT", 100, 200),
              {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "ts": 300, "dur": 4},
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 500}]
    rows = kernel_table(events, steps=2)
    assert [(r["name"], r["category"], r["ms_per_step"], r["calls_per_step"]) for r in rows] == [
        ("nvjet_sm90_tst_128x256_TNT", "gemm", 0.1, 0.5),
        ("triton_poi_fused_gelu_mul_0", "other", 0.04, 1.0),
        ("Memset (Device)", "other", 0.002, 0.5)]
