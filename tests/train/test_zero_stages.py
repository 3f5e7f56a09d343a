"""Two gloo processes with ZeRO 1, 2 and 3 on the sample corpus: the loss falls, and every stage tracks a single
process training the same global batches (dropout off, fp32, so the only differences are summation order)."""

import pytest

from tests.train.launch import explain, losses, run_trainer, tiny_config

STEPS = 8


def corpus_config(out, sample_corpus):
    cfg = tiny_config(out)
    cfg["model"].update(vocab_size=8192, hidden_dropout=0.0)
    cfg["data"] = {**sample_corpus, "seq_len": 64}
    cfg["optim"]["lr"] = 0.002
    cfg["schedule"] = {"total_steps": STEPS, "warmup_fraction": 0.25}
    cfg["checkpoint"]["save_interval"] = 0
    return cfg


@pytest.mark.slow
def test_zero_1_2_3_on_two_processes_match_one_process_and_loss_falls(tmp_path, sample_corpus):
    single = corpus_config(tmp_path / "single", sample_corpus)
    proc = run_trainer(single, tmp_path, "--real-data")
    assert proc.returncode == 0, explain(proc)
    reference = {step: v[0] for step, v in losses(tmp_path / "single").items()}

    proc = run_trainer(corpus_config(tmp_path / "two", sample_corpus), tmp_path, "--real-data", "--sweep",
                       "parallel.zero_stage=1,2,3", nproc=2)
    assert proc.returncode == 0, explain(proc)
    for stage in (1, 2, 3):
        curve = {step: v[0] for step, v in losses(tmp_path / "two" / str(stage)).items()}
        assert sorted(curve) == list(range(1, STEPS + 1))
        assert curve[1] == pytest.approx(reference[1], rel=1e-5), f"ZeRO-{stage} step 1"
        for step in range(2, STEPS + 1):
            assert curve[step] == pytest.approx(reference[step], rel=2e-3), f"ZeRO-{stage} step {step}"
        assert curve[STEPS] < curve[1] - 0.3, f"ZeRO-{stage} loss did not fall: {curve}"


@pytest.mark.slow
def test_the_compiled_model_trains_like_the_eager_one_on_two_processes_with_zero_2(tmp_path, sample_corpus):
    """On a GPU the trainer compiles by default with ZeRO 0-2 on any number of processes: the graph with
    DeepSpeed's flat-gradient ZeRO-2 around it (traced without code generation on a CPU, so the same arithmetic)
    gives the eager run's losses, step for step."""
    cfg = corpus_config(tmp_path / "two", sample_corpus)
    cfg["parallel"]["zero_stage"] = 2
    proc = run_trainer(cfg, tmp_path, "--real-data", "--sweep", "parallel.compile=false,true", nproc=2,
                       env={"TORCH_LOGS": "recompiles"})
    assert proc.returncode == 0, explain(proc)
    assert "Recompiling" not in proc.stderr and "model compiled: parallel.compile is true" in proc.stderr
    eager, compiled = (losses(tmp_path / "two" / value) for value in ("false", "true"))
    assert sorted(compiled) == list(range(1, STEPS + 1)) and compiled == eager
