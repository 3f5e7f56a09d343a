"""A study file expands into the runs it promises (variants x budgets, one ablation variant per switch, sweep
grids), and a study whose runs could not be compared, or would not start, is refused before anything runs."""

import json
from pathlib import Path

import pytest

from megabert.study.spec import SWITCHES, StudyError, load_study, override_args

REPO = Path(__file__).resolve().parents[2]
BERT = {"model.position_embedding": "learned", "model.mlp_type": "gelu", "model.unpad": False,
        "model.low_precision_layernorm": False, "model.sparse_mlm_head": False, "data.mask_prob": 0.15}


def write_study(tmp_path: Path, sample_corpus: dict, **changes) -> Path:
    study = {"name": "t", "output_dir": str(tmp_path / "out"), "base_config": str(REPO / "configs" / "tiny.json"),
             "overrides": {"data.data_path": sample_corpus["data_path"], "data.vocab_file": sample_corpus["vocab_file"]},
             "budgets_minutes": [0.2, 0.1],
             "variants": [{"name": "MosaicBERT", "role": "mosaicbert"},
                          {"name": "BERT", "role": "baseline", "overrides": BERT}]}
    study.update(changes)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    return path


def test_every_variant_runs_at_every_budget_and_the_ablation_has_one_variant_per_switch(tmp_path, sample_corpus):
    study = load_study(write_study(tmp_path, sample_corpus, ablation={"budget_minutes": 0.3}))
    runs = study.runs()
    assert study.budgets_minutes == [0.1, 0.2]
    main = [(r.variant.name, r.budget_minutes) for r in runs if r.variant.role != "ablation"]
    assert main == [("MosaicBERT", 0.1), ("BERT", 0.1), ("MosaicBERT", 0.2), ("BERT", 0.2), ("MosaicBERT", 0.3)]
    ablation = [r for r in runs if r.variant.role == "ablation"]
    assert [r.variant.switch for r in ablation] == [s.name for s in SWITCHES]
    assert {r.budget_minutes for r in ablation} == {0.3}
    for run, switch in zip(ablation, SWITCHES):
        cfg = study.run_config(run)
        section, key = switch.key.split(".")
        assert getattr(getattr(cfg, section), key) == switch.off
        others = [s for s in SWITCHES if s is not switch]
        assert all(getattr(getattr(cfg, s.key.split(".")[0]), s.key.split(".")[1]) == s.on for s in others)
        assert cfg.schedule.budget_minutes == 0.3 and cfg.checkpoint.resume == "auto"
        assert cfg.output_dir == str(run.directory) and cfg.checkpoint.dir == str(run.directory / "checkpoints")
    assert len({r.directory for r in runs}) == len(runs)


def test_a_sweep_grid_gives_one_variant_per_combination(tmp_path, sample_corpus):
    sweeps = [{"name": "BERT", "role": "baseline", "overrides": BERT,
               "grid": {"optim.lr": [1e-4, 2e-4], "schedule.warmup_fraction": [0.06, 0.2]}}]
    study = load_study(write_study(tmp_path, sample_corpus, variants=[{"name": "MosaicBERT", "role": "mosaicbert"}],
                                   sweeps=sweeps, budgets_minutes=[0.1]))
    names = [r.variant.name for r in study.runs()]
    assert names == ["MosaicBERT", "BERT lr=0.0001 warmup_fraction=0.06", "BERT lr=0.0001 warmup_fraction=0.2",
                     "BERT lr=0.0002 warmup_fraction=0.06", "BERT lr=0.0002 warmup_fraction=0.2"]
    last = study.run_config(study.runs()[-1])
    assert last.optim.lr == 2e-4 and last.schedule.warmup_fraction == 0.2 and last.model.mlp_type == "gelu"


def test_runs_that_would_train_on_different_data_are_refused(tmp_path, sample_corpus):
    variants = [{"name": "MosaicBERT", "role": "mosaicbert"},
                {"name": "long", "overrides": {"data.seq_len": 256}}]
    with pytest.raises(StudyError, match=r"differ in seq_len: '128' vs '256'.*set these in 'overrides'"):
        load_study(write_study(tmp_path, sample_corpus, variants=variants))


@pytest.mark.parametrize("changes, message", [
    ({"ablation": {"switches": ["alibi", "rope"]}}, r"unknown switch\(es\) \['rope'\]"),
    ({"variants": [{"name": "BERT", "overrides": BERT}], "ablation": {}}, r"give one variant that role"),
    ({"variants": [{"name": "M", "role": "mosaicbert", "overrides": {"model.unpad": False}}],
      "ablation": {"switches": ["unpad"]}}, r"has model.unpad = False; set it to True or drop the switch"),
    ({"variants": [{"name": "M", "overrides": {"model.num_heads": 3}}]}, r"run m/0.1min: model.hidden_size \(128\)"),
    ({"overrides": {"output_dir": "x"}}, r"'output_dir' is set by the study for each run"),
    ({"variants": [{"name": "A b"}, {"name": "a-B"}]}, r"variant names must differ"),
    ({"budgets_minutes": [0]}, r"0 is not a positive number of minutes"),
    ({"downstream": {"name": "d", "train_file": "nope.tsv", "dev_file": "nope.tsv"}},
     r"downstream.train_file nope.tsv does not exist"),
    ({"varients": []}, r"unknown key\(s\) \['varients'\]"),
])
def test_mistakes_are_named_with_their_fix(tmp_path, sample_corpus, changes, message):
    with pytest.raises(StudyError, match=message):
        load_study(write_study(tmp_path, sample_corpus, **changes))


def test_missing_corpus_is_reported_before_anything_runs(tmp_path, sample_corpus):
    corpus = {**sample_corpus, "data_path": [str(tmp_path / "nothing_text_document")]}
    with pytest.raises(StudyError, match=r"corpus .*nothing_text_document.bin and .idx not found; preprocess"):
        load_study(write_study(tmp_path, corpus))


def test_overrides_become_pretrain_arguments_the_config_parser_reads_back():
    assert override_args({"optim.lr": 1e-4, "model.unpad": False, "data.data_path": ["a", "b"], "x.y": "s"}) == [
        "--optim.lr", "0.0001", "--model.unpad", "false", "--data.data_path", '["a", "b"]', "--x.y", "s"]


def test_shipped_study_configs_expand(monkeypatch):
    """The shipped studies parse and expand (their corpora and task files are not built here)."""
    import megabert.study.spec as spec

    monkeypatch.setattr(spec, "check_runs", lambda study: None)
    tiny = load_study(REPO / "configs" / "study" / "tiny.json")
    assert len([r for r in tiny.runs() if r.variant.role == "ablation"]) == len(SWITCHES)
    for name in ("base_h200.json", "recipe_sweep.json"):
        study = load_study(REPO / "configs" / "study" / name)
        for run in study.runs():
            study.run_config(run)  # every run's config is valid
    sweep = load_study(REPO / "configs" / "study" / "recipe_sweep.json")
    assert len(sweep.budgets_minutes) == 1 and sweep.downstream is None
