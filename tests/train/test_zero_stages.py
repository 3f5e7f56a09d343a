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
