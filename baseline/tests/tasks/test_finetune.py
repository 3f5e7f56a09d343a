"""End-to-end fine-tuning on the bundled GLUE-format sample with a tiny model (CPU, seconds)."""

import json

import numpy as np
import pytest

from megabert.tasks.data import load_task_data
from megabert.tasks.finetune import Job, build_model, run_job
from megabert.tasks.glue import glue_task
from megabert.tasks.recipe import Recipe
from megabert.tasks.runner import run_parallel
from megabert.tasks.task import TaskError, user_task
from tests.tasks.tiny_model import GLUE_SAMPLE, load_tool, make_model_dir, read_json

run_glue = load_tool("run_glue")

FAST = Recipe(lr=2e-3, weight_decay=1e-5, epochs=4, batch_size=16, seq_len=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_file):
    return make_model_dir(tmp_path_factory.mktemp("pretrained") / "model", vocab_file)


def _majority(labels: np.ndarray) -> float:
    return np.bincount(labels).max() / len(labels)


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_tiny_finetune_beats_majority_class(task, model_dir, tmp_path):
    spec = glue_task(task, GLUE_SAMPLE)
    result = run_job(Job(task=spec.to_dict(), recipe=FAST.to_dict(), seed=3, model_dir=str(model_dir),
                         output_dir=str(tmp_path / task), device="cpu"))
    majority = _majority(load_task_data(spec).evals["dev"].labels)
    assert result["metrics"]["dev"]["accuracy"] > majority + 0.15
    assert len(result["history"]) == FAST.epochs and read_json(tmp_path / task / "result.json")["seed"] == 3


def test_finetuning_longer_than_pretraining_uses_alibi_extrapolation(tmp_path, vocab_file):
    """Pretrained at 16 tokens, fine-tuned where the label's evidence sits past token 20: the ALiBi model learns
    it; a learned-position model is refused before training."""
    pretrained = make_model_dir(tmp_path / "short", vocab_file, pretraining_seq_len=16)
    filler = "the senator and the engineer described the old bridge near the river last winter on monday ,"
    rows = load_task_data(glue_task("sst2", GLUE_SAMPLE)).train
    lines = ["text\tlabel"] + [f"{filler} {text}\t{label}" for text, label in zip(rows.texts_a, rows.labels)]
    (tmp_path / "long.tsv").write_text("\n".join(lines) + "\n")
    spec = user_task("long", tmp_path / "long.tsv", {"dev": tmp_path / "long.tsv"}, ["text"], "label")
    recipe = Recipe(lr=3e-3, epochs=6, batch_size=16, seq_len=64)
    result = run_job(Job(task=spec.to_dict(), recipe=recipe.to_dict(), seed=3, model_dir=str(pretrained),
                         output_dir=str(tmp_path / "out"), device="cpu"))
    assert result["metrics"]["dev"]["accuracy"] > 0.75

    learned = make_model_dir(tmp_path / "learned", vocab_file, position_embedding="learned", mlp_type="gelu",
                             max_position_embeddings=32)
    with pytest.raises(TaskError, match="exceeds the learned position table"):
        run_job(Job(task=spec.to_dict(), recipe=recipe.to_dict(), seed=0, model_dir=str(learned),
                    output_dir=str(tmp_path / "out2"), device="cpu"))


def test_init_from_finetuned_checkpoint_keeps_encoder_and_pooler_not_classifier(model_dir, tmp_path):
    spec = glue_task("mnli", GLUE_SAMPLE)
    recipe = Recipe(lr=1e-3, epochs=1, batch_size=32, seq_len=32)
    mnli = run_job(Job(task=spec.to_dict(), recipe=recipe.to_dict(), seed=0, model_dir=str(model_dir),
                       output_dir=str(tmp_path / "mnli"), save_model=True, device="cpu"))
    rte_job = Job(task=glue_task("rte", GLUE_SAMPLE).to_dict(), recipe=recipe.to_dict(), seed=0,
                  model_dir=str(model_dir), output_dir=str(tmp_path / "rte"), init_dir=mnli["saved_model"])
    model, _ = build_model(rte_job, num_labels=2)
    from megabert.model.pretrained import load_state_dict

    saved = load_state_dict(mnli["saved_model"])
    state = model.state_dict()
    assert saved["classifier.weight"].shape[0] == 3 and state["classifier.weight"].shape[0] == 2
    for key in ("pooler.weight", "bert.encoder.layers.1.mlp.wo.weight"):
        assert (state[key] == saved[key]).all()
    assert read_json(tmp_path / "mnli" / "model" / "config.json")["tokenizer"]["vocab_file"] == "vocab.txt"


def test_cli_runs_all_eight_tasks_with_mnli_chain_and_writes_tables(model_dir, tmp_path, capsys):
    out = tmp_path / "glue"
    code = run_glue.main(["--model", str(model_dir), "--glue-dir", str(GLUE_SAMPLE), "--output", str(out),
                          "--seeds", "5", "--epochs", "1", "--seq-len", "48", "--lr", "1e-3", "--device", "cpu"])
    assert code == 0
    summary = read_json(out / "results.json")
    assert list(summary["tasks"]) == ["mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte"]
    assert summary["glue_complete"]
    scores = [t["score"] for t in summary["tasks"].values()]
    assert summary["glue_average"] == pytest.approx(np.mean(scores))
    assert set(summary["tasks"]["mnli"]["metrics"]) == {"matched/accuracy", "mismatched/accuracy"}
    assert set(summary["tasks"]["stsb"]["metrics"]) == {"pearson", "spearman"}
    for task in ("rte", "mrpc", "stsb"):
        assert read_json(out / task / "seed_5" / "result.json")["init_dir"] == str(out / "mnli" / "seed_5" / "model")
    assert read_json(out / "sst2" / "seed_5" / "result.json")["init_dir"] is None
    assert "**GLUE average**" in (out / "results.md").read_text() and "GLUE average" in capsys.readouterr().out

    mnli_model = out / "mnli" / "seed_5" / "model"
    assert run_glue.main(["--model", str(model_dir), "--glue-dir", str(GLUE_SAMPLE), "--output", str(tmp_path / "rte"),
                          "--tasks", "rte", "--seeds", "1", "--epochs", "1", "--seq-len", "32",
                          "--mnli-checkpoint", str(mnli_model)]) == 0
    assert read_json(tmp_path / "rte" / "rte" / "seed_1" / "result.json")["init_dir"] == str(mnli_model)


def test_cli_user_task_and_bad_input_fail_before_training(model_dir, tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("review,stars\n" + "\n".join(f'"{t}",{"good" if y else "bad"}' for t, y in
                                                    [("great, fun", 1), ("dull", 0)] * 20) + "\n")
    base = ["--model", str(model_dir), "--output", str(tmp_path / "out"), "--device", "cpu", "--train-file",
            str(train), "--dev-file", str(train), "--epochs", "1", "--seq-len", "16"]
    assert run_glue.main(base + ["--text-columns", "text", "--label-column", "stars"]) == 2
    assert "column(s) 'text' not found" in capsys.readouterr().err
    assert run_glue.main(base + ["--text-columns", "review", "--label-column", "stars", "--labels", "good,ok"]) == 2
    assert "label 'bad' is not in the label set ['good', 'ok']" in capsys.readouterr().err
    assert run_glue.main(base + ["--glue-dir", str(tmp_path), "--tasks", "rte", "--text-columns", "review"]) == 2
    assert "has no RTE/ directory" in capsys.readouterr().err
    assert run_glue.main(base + ["--text-columns", "review", "--label-column", "stars", "--vocab-file",
                                 str(tmp_path / "nope.txt")]) == 2
    assert "needs vocab_file pointing at an existing file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing trained
    assert run_glue.main(base + ["--text-columns", "review", "--label-column", "stars", "--seeds", "1,2"]) == 0
    summary = read_json(tmp_path / "out" / "results.json")
    assert summary["tasks"]["custom"]["seeds"] == [1, 2] and summary["glue_average"] is None


@pytest.mark.slow
def test_parallel_runner_pins_one_job_per_slot(model_dir, tmp_path):
    spec = load_task_data(glue_task("sst2", GLUE_SAMPLE)).spec
    recipe = Recipe(lr=1e-3, epochs=1, batch_size=32, seq_len=32)
    jobs = [Job(task=spec.to_dict(), recipe=recipe.to_dict(), seed=s, model_dir=str(model_dir),
                output_dir=str(tmp_path / f"seed_{s}"), device="cpu") for s in (1, 2)]
    results = run_parallel(jobs, slots=["", ""])  # CPU stand-ins for two GPUs
    assert [r["seed"] for r in results] == [1, 2]
    assert all(json.loads((tmp_path / f"seed_{s}" / "job.json").read_text())["seed"] == s for s in (1, 2))


def test_classifier_head_runs_in_fp32_under_bf16_autocast(model_dir, tmp_path):
    """bf16 regression outputs would collapse onto a few values; the [B, H] head stays fp32."""
    import torch

    job = Job(task={}, recipe=FAST.to_dict(), seed=0, model_dir=str(model_dir), output_dir=str(tmp_path))
    model, _ = build_model(job, num_labels=1)
    ids = torch.randint(5, 100, (4, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, torch.ones_like(ids), None, torch.rand(4))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    assert "classifier.weight" in model.state_dict()  # parameter names unchanged
