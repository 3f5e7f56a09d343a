"""tools/run_study.py end to end on CPU: a tiny study on the bundled sample corpus (MosaicBERT, a BERT baseline and
one ablation switch, budgets of seconds, the downstream task built from fixture lists, two workers) produces every
output, scores every variant on the same masked tokens and skips finished work on rerun; a pretraining that did not
reach its end is not taken for finished."""

import json
import re
from pathlib import Path

import pytest

from megabert.study.evaluation import load_eval_set, masked_positions_digest
from megabert.study.runner import RUN_TIMING
from tests.study.test_spec import BERT
from tests.tasks.tiny_model import load_tool

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def sample_train_samples(study_dir: Path, run_id: str) -> int:
    """The training split's size in samples, as the run's loader logged it ("... epochs of M samples")."""
    log = (study_dir / "runs" / run_id / "logs" / "pretrain.log").read_text()
    return int(re.search(r"epochs of (\d+) samples", log).group(1))


def commands_run(run_dir: Path) -> int:
    """How many stage commands the runner started in this run's directory (each log line '$ ...' is one)."""
    return sum(line.startswith("$ ") for log in (run_dir / "logs").glob("*.log") for line in log.read_text()
               .splitlines())


def test_tiny_study_end_to_end(tmp_path, sample_corpus):
    task = tmp_path / "task"
    assert load_tool("build_package_task").main(["--packages", str(FIXTURES / "Packages"), "--output", str(task),
                                                 "--min-section-size", "3"]) == 0
    study = {
        "name": "e2e", "output_dir": str(tmp_path / "study"), "base_config": str(REPO / "configs" / "tiny.json"),
        "overrides": {"data.data_path": sample_corpus["data_path"], "data.vocab_file": sample_corpus["vocab_file"],
                      "data.cache_dir": sample_corpus["cache_dir"], "data.num_workers": 0, "data.seq_len": 32,
                      "parallel.device": "cpu", "model.hidden_size": 32, "model.num_layers": 1,
                      "model.intermediate_size": 64, "global_batch_size": 8, "micro_batch_size": 8,
                      "logging.log_interval": 5, "logging.eval_interval": 0, "logging.tensorboard": False,
                      "checkpoint.save_interval": 0},
        "budgets_minutes": [0.03],
        "variants": [{"name": "MosaicBERT", "role": "mosaicbert"},
                     {"name": "BERT", "role": "baseline", "overrides": {**BERT, "optim.lr": 1e-3}}],
        "ablation": {"budget_minutes": 0.03, "switches": ["sparse_mlm_head"]},
        "evaluation": {"samples": 32, "batch_size": 16},
        "downstream": {"name": "debian_sections", "train_file": str(task / "train.tsv"),
                       "dev_file": str(task / "dev.tsv"), "labels_file": str(task / "labels.txt"),
                       "args": ["--epochs", "1", "--seq-len", "32", "--batch-size", "8", "--seeds", "1"]},
    }
    config = tmp_path / "study.json"
    config.write_text(json.dumps(study))
    run_study = load_tool("run_study")
    assert run_study.main(["--config", str(config), "--cpu-workers", "2"]) == 0

    out = tmp_path / "study"
    for name in ("results.json", "results.md", "pareto.png", "ablation.png", "plan.json", "eval_set.npz",
                 "eval_set.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    runs = {r["run"]: r for r in results["runs"]}
    assert sorted(runs) == ["bert/0.03min", "mosaicbert-no-sparse-mlm-head/0.03min", "mosaicbert/0.03min"]
    digest = masked_positions_digest(load_eval_set(out / "eval_set.npz")["labels"])
    for run_id, row in runs.items():
        assert row["status"] == "done", row
        assert row["masked_positions_sha256"] == digest, run_id  # the same masked tokens for every variant
        assert row["eval_loss"] > 0 and 0 <= row["eval_accuracy"] <= 1 and row["downstream_score"] is not None
        assert row["steps"] > 25 and row["wall_clock_s"] > 0 and row["tokens_per_s"] > 0
        assert row["epochs"] == pytest.approx(row["steps"] * 8 / sample_train_samples(out, run_id), rel=1e-9)
        run_dir = out / "runs" / run_id
        for name in ("pretrain.json", "evaluation.json", "downstream/results.json", "commands.sh",
                     "model/model.safetensors"):
            assert (run_dir / name).is_file(), (run_id, name)
        timing = json.loads((run_dir / RUN_TIMING).read_text())  # trained in one go: its overhead is measured
        assert timing["seconds"] > 60 * 0.03 and timing["budget_minutes"] == 0.03
        assert timing["overhead_minutes"] == pytest.approx(timing["seconds"] / 60 - 0.03, abs=0.01)
    bert = json.loads((out / "runs" / "bert" / "0.03min" / "config.json").read_text())
    assert bert["model"]["position_embedding"] == "learned" and bert["data"]["mask_prob"] == 0.15
    assert bert["schedule"]["budget_minutes"] == 0.03
    assert [a["switch"] for a in results["ablation"]] == ["sparse_mlm_head"]
    assert results["ablation"][0]["throughput_change_pct"] is not None
    assert results["hardware"] == {"1 x cpu": list(runs)}  # each run's trainer recorded what it trained on
    assert "Hardware: 1 x cpu, for all 3 run(s) that recorded theirs." in (out / "results.md").read_text()
    started = {run_id: commands_run(out / "runs" / run_id) for run_id in runs}
    assert set(started.values()) == {3}  # pretrain, evaluate, downstream
    study_log = (out / "study.log").read_text()
    assert "study e2e: 3 runs, 3 to do" in study_log
    for run_id in runs:
        assert f"{run_id}: pretraining on cpu" in study_log and f"{run_id}: done" in study_log, run_id

    # Rerun: everything is finished, nothing starts; the study's log gains the sitting's lines.
    assert run_study.main(["--config", str(config), "--cpu-workers", "2"]) == 0
    assert {run_id: commands_run(out / "runs" / run_id) for run_id in runs} == started
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    assert (out / "study.log").read_text().startswith(study_log)
    assert "study e2e: 3 runs, 0 to do" in (out / "study.log").read_text()[len(study_log):]



def test_a_pretraining_stopped_before_its_end_is_not_finished(tmp_path, sample_corpus):
    """pretrain_bert.py exits 0 after a SIGTERM too (with a checkpoint to resume from) but writes no final summary;
    the runner then neither marks the run done nor evaluates it."""
    import pytest

    from megabert.study.queue import Processes, StageError, Stopped
    from megabert.study.runner import StudyRunner, pretrain_result
    from megabert.study.spec import load_study
    from tests.study.test_spec import write_study

    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1]))
    runner = StudyRunner(study, [], Processes(1))
    run = study.runs()[0]
    run.directory.mkdir(parents=True)
    (run.directory / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 5.0}) + "\n")
    with pytest.raises(StageError, match="exited without finishing"):
        runner._record_pretrain(run)
    runner.processes.stop()
    with pytest.raises(Stopped, match="its checkpoint resumes it"):
        runner._record_pretrain(run)
    assert pretrain_result(run) is None and not runner.is_done(run)
    with open(run.directory / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 40, "final/step": 40, "final/stopped_by_signal": False,
                            "final/budget_spent_seconds": 59.0}) + "\n")
    with pytest.raises(StageError, match="no exported model"):
        runner._record_pretrain(run)
    (run.directory / "model").mkdir()
    (run.directory / "model" / "model.safetensors").write_bytes(b"weights")
    runner._record_pretrain(run)
    assert pretrain_result(run)["budget_spent_seconds"] == 59.0 and pretrain_result(run)["step"] == 40


def test_a_finished_run_whose_model_was_deleted_stays_finished_and_a_stale_one_says_so(tmp_path, sample_corpus):
    """keep_models false: the runner deletes a finished run's model and checkpoints, and the run stays done from the
    stamp it keeps -- a study directory copied without its models carries its finished runs to another machine.
    When the evaluation no longer matches, the runner refuses to evaluate a model that is not there."""
    import pytest

    from megabert.study.queue import Processes, Slot, StageError
    from megabert.study.runner import MODEL_REMOVED, StudyRunner, model_stamp
    from megabert.study.spec import load_study
    from tests.study.test_spec import write_study

    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1], keep_models=False))
    assert study.keep_models is False
    runner = StudyRunner(study, [], Processes(1))
    runner.eval_meta = {"masked_positions_sha256": "abc"}
    run = study.runs()[0]
    (run.directory / "model").mkdir(parents=True)
    (run.directory / "model" / "model.safetensors").write_bytes(b"weights")
    (run.directory / "checkpoints" / "step_0000040").mkdir(parents=True)
    (run.directory / "pretrain.json").write_text(json.dumps({"step": 40}))
    stamp = model_stamp(run)
    (run.directory / "evaluation.json").write_text(json.dumps({"model_file": stamp, "masked_positions_sha256": "abc"}))
    (run.directory / "downstream").mkdir()
    (run.directory / "downstream" / "results.json").write_text("{}")
    (run.directory / "downstream.json").write_text(json.dumps({"model_file": stamp}))
    # Every stage is fresh: work() starts none, and with keep_models false deletes the model and checkpoints.
    assert runner.is_done(run)
    runner.work(run, Slot("cpu0", "", "cpu"))
    assert commands_run(run.directory) == 0
    assert not (run.directory / "model").exists() and not (run.directory / "checkpoints").exists()
    assert json.loads((run.directory / MODEL_REMOVED).read_text()) == {"model_file": stamp}
    assert model_stamp(run) == stamp and runner.is_done(run)
    assert not (run.directory / RUN_TIMING).exists()  # nothing trained in this call: no overhead measured

    runner.eval_meta = {"masked_positions_sha256": "another evaluation set"}
    assert not runner.is_done(run)
    with pytest.raises(StageError, match="model was deleted after its results were recorded"):
        runner.work(run, Slot("cpu0", "", "cpu"))


def test_keep_models_must_be_a_boolean(tmp_path, sample_corpus):
    import pytest

    from megabert.study.spec import StudyError, load_study
    from tests.study.test_spec import write_study

    with pytest.raises(StudyError, match="keep_models must be true or false"):
        load_study(write_study(tmp_path, sample_corpus, keep_models="no"))


def test_a_time_limit_counts_the_largest_overhead_the_study_has_measured(tmp_path, sample_corpus):
    """Until a run has measured it, a run needs --run-overhead-minutes besides its budget; then the largest overhead
    a run of this study measured (timing.json, kept between sittings), so a sitting packs the runs that fit."""
    import time

    from megabert.study.queue import Processes
    from megabert.study.runner import StudyRunner, has_checkpoint
    from megabert.study.spec import load_study
    from tests.study.test_spec import write_study

    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1]))
    runner = StudyRunner(study, [], Processes(1), deadline=time.monotonic() + 150.0, overhead_minutes=2.0)
    runner.sitting_seconds = 600.0  # a 10-minute sitting with 2.5 minutes left
    first, second = study.runs()
    assert runner.run_overhead_minutes() == 2.0 and not runner.fits(first)  # 1 + 2 minutes: too long
    for run, overhead in ((first, 0.2), (second, 0.4)):
        run.directory.mkdir(parents=True)
        (run.directory / RUN_TIMING).write_text(json.dumps({"seconds": 60 * (1 + overhead), "budget_minutes": 1,
                                                            "overhead_minutes": overhead}))
    assert runner.run_overhead_minutes() == 0.4 and runner.fits(first)  # 1.4 minutes fit in 2.5
    assert not has_checkpoint(first)
    (first.directory / "checkpoints" / "step_0000010").mkdir(parents=True)
    assert has_checkpoint(first)  # resumed, it would not measure its whole overhead


def test_a_run_started_with_other_settings_is_refused_by_name_and_a_moved_study_is_not(tmp_path, sample_corpus):
    """A study file edited after its runs began (another lr) must not report the old runs under the new settings:
    the runner names each such run and setting and touches nothing; where a run lives does not count, nor the step
    count its budget fixed."""
    import pytest

    from megabert.config import to_dict
    from megabert.study.queue import Processes
    from megabert.study.runner import StudyRunner, changed_settings
    from megabert.study.spec import StudyError, load_study
    from tests.study.test_spec import write_study

    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1]))
    mosaic, bert = study.runs()
    for run in (mosaic, bert):  # both started, as the trainer records it
        run.directory.mkdir(parents=True)
        (run.directory / "config.json").write_text(json.dumps(to_dict(study.run_config(run))))
    assert changed_settings(study, mosaic) == {} and changed_settings(study, bert) == {}
    resumed = to_dict(study.run_config(mosaic))
    resumed["schedule"]["total_steps"] = 1517  # a run resumed after its budget fixed the count records that count
    (mosaic.directory / "config.json").write_text(json.dumps(resumed))
    assert changed_settings(study, mosaic) == {}
    older = json.loads((bert.directory / "config.json").read_text())
    del older["optim"]["lr"]  # a release that had no such field: nothing recorded to hold the run to
    older["optim"]["retired_field"] = 1
    (bert.directory / "config.json").write_text(json.dumps(older))
    assert changed_settings(study, bert) == {}

    edited = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1], variants=[
        {"name": "MosaicBERT", "role": "mosaicbert", "overrides": {"optim.lr": 1e-5}},
        {"name": "BERT", "role": "baseline", "overrides": BERT}]))
    assert changed_settings(edited, edited.runs()[0]) == {"optim.lr": (study.run_config(mosaic).optim.lr, 1e-5)}
    with pytest.raises(StudyError, match=r"1 run\(s\) started with other settings.*\n  mosaicbert/1min .*optim.lr"):
        StudyRunner(edited, [], Processes(1)).prepare()
    assert (mosaic.directory / "config.json").is_file() and not (edited.output_dir / "plan.json").exists()

    moved = tmp_path / "elsewhere"
    (tmp_path / "out").rename(moved)
    relocated = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1], output_dir=str(moved)))
    assert [changed_settings(relocated, run) for run in relocated.runs()] == [{}, {}]


def test_a_downstream_result_is_held_to_the_task_it_was_made_with(tmp_path, sample_corpus):
    """Fine-tuning results count only for the task the study names now (files, columns and recipe): another
    --epochs makes them stale, and for a model already deleted the runner says so instead of reporting them."""
    import dataclasses
    import shutil

    import pytest

    from megabert.study.queue import Processes, Slot, StageError
    from megabert.study.runner import MODEL_REMOVED, StudyRunner, model_stamp
    from megabert.study.spec import load_study
    from tests.study.test_spec import write_study

    (tmp_path / "task.tsv").write_text("package\tlabel\ttext\n")
    task = {"name": "debian_sections", "train_file": str(tmp_path / "task.tsv"), "dev_file": str(tmp_path / "task.tsv"),
            "args": ["--epochs", "2"]}
    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1], downstream=task))
    runner = StudyRunner(study, [], Processes(1))
    run = study.runs()[0]
    (run.directory / "model").mkdir(parents=True)
    (run.directory / "model" / "model.safetensors").write_bytes(b"weights")
    (run.directory / "downstream").mkdir()
    (run.directory / "downstream" / "results.json").write_text("{}")
    marker = {"model_file": model_stamp(run), "task": dataclasses.asdict(study.downstream)}
    (run.directory / "downstream.json").write_text(json.dumps(marker))
    assert runner._downstream_fresh(run)

    recipe = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[1],
                                    downstream={**task, "args": ["--epochs", "3"]}))
    rerun = StudyRunner(recipe, [], Processes(1))
    assert not rerun._downstream_fresh(recipe.runs()[0])
    (run.directory / "downstream.json").write_text(json.dumps({"model_file": model_stamp(run)}))
    assert rerun._downstream_fresh(recipe.runs()[0])  # a marker that recorded no task: its model decides

    (run.directory / "downstream.json").write_text(json.dumps(marker))
    (run.directory / "pretrain.json").write_text(json.dumps({"step": 40}))
    (run.directory / MODEL_REMOVED).write_text(json.dumps({"model_file": model_stamp(run)}))
    shutil.rmtree(run.directory / "model")
    with pytest.raises(StageError, match="model was deleted after its results were recorded"):
        rerun.work(recipe.runs()[0], Slot("cpu0", "", "cpu"))
