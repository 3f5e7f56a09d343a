"""One evaluation set per study: built once from the validation split at 15% masking, scored the same way for every
variant (same masked tokens, whatever head, padding or masking rate the model trained with)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megabert.config import TrainConfig, apply_overrides
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.pretrained import save_pretrained
from megabert.study import evaluation as E
from megabert.study.spec import SWITCHES

VARIANTS = {"mosaicbert": {}, **{f"no_{s.name}": {s.key: s.off} for s in SWITCHES if s.key.startswith("model.")},
            "bert": {s.key: s.off for s in SWITCHES if s.key.startswith("model.")}}


def sample_config(sample_corpus: dict, **data) -> TrainConfig:
    cfg = apply_overrides(TrainConfig(), [("data.data_path", json.dumps(sample_corpus["data_path"])),
                                          ("data.vocab_file", sample_corpus["vocab_file"]),
                                          ("data.cache_dir", sample_corpus["cache_dir"]), ("data.seq_len", "64")])
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def model_dir(tmp_path, name: str, overrides: dict) -> str:
    """A tiny model with the same initial weights for every variant (the switches add or remove no weights,
    except learned positions)."""
    fields = dict(vocab_size=8192, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                  attention_backend="sdpa", hidden_dropout=0.0)
    fields.update({k.split(".")[1]: v for k, v in overrides.items()})
    from megabert.config import ModelConfig

    cfg = ModelConfig(**fields)
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(cfg)
    return str(save_pretrained(model, tmp_path / name, cfg))


def test_the_set_is_built_once_from_the_validation_split_at_15_percent(tmp_path, sample_corpus):
    cfg = sample_config(sample_corpus, mask_prob=0.3)  # the training rate does not matter
    path = tmp_path / "eval_set.npz"
    meta = E.build_eval_set(cfg, path, samples=96)
    arrays = E.load_eval_set(path)
    assert meta["samples"] == 96 and arrays["input_ids"].shape == (96, 64)
    body = (arrays["attention_mask"].sum() - 2 * 96)  # real tokens but [CLS] and [SEP]
    assert 0.12 < meta["masked_tokens"] / body < 0.18
    assert meta["masked_positions_sha256"] == E.masked_positions_digest(arrays["labels"])
    mtime = path.stat().st_mtime_ns
    assert E.build_eval_set(cfg, path, samples=96) == meta and path.stat().st_mtime_ns == mtime  # reused
    with pytest.raises(E.EvaluationError, match=r"built with other settings \(samples_requested\); delete"):
        E.build_eval_set(cfg, path, samples=64)
    other_seed = E.build_eval_set(cfg, tmp_path / "seed.npz", samples=96, seed=cfg.seed + 1)
    assert other_seed["masked_positions_sha256"] != meta["masked_positions_sha256"]
    # the trainer's own validation batches at 15%, with the same seed: the same masks
    from megabert.config import replace
    from megabert.data import build_mlm_data

    valid = next(build_mlm_data(replace(cfg.data, eval_mask_prob=0.15), cfg.seed, micro_batch_size=64)
                 .valid_batches())
    assert np.array_equal(valid["labels"].numpy(), arrays["labels"][:64])
    unigram = meta["unigram"]
    assert unigram["training_tokens_counted"] > 1_000_000 and 4.0 < unigram["loss"] < 9.0


def test_every_variant_is_scored_on_the_same_masked_tokens(tmp_path, sample_corpus):
    path = tmp_path / "eval_set.npz"
    meta = E.build_eval_set(sample_config(sample_corpus), path, samples=48)
    results = {name: E.evaluate_model(model_dir(tmp_path, name, overrides), path, "cpu", batch_size=16)
               for name, overrides in VARIANTS.items()}
    for name, result in results.items():
        assert result["masked_positions_sha256"] == meta["masked_positions_sha256"], name
        assert result["masked_tokens"] == meta["masked_tokens"], name
    # Switches that change only how the same weights compute give the same scores: the evaluation is consistent.
    reference = results["mosaicbert"]
    for name in ("no_unpad", "no_sparse_mlm_head", "no_low_precision_layernorm"):
        assert results[name]["loss"] == pytest.approx(reference["loss"], abs=1e-5), name
        assert results[name]["accuracy"] == reference["accuracy"], name
    assert results["bert"]["loss"] != pytest.approx(reference["loss"], abs=1e-3)  # another architecture


def test_evaluation_command_writes_the_result_with_the_model_it_scored(tmp_path, sample_corpus):
    path = tmp_path / "eval_set.npz"
    E.build_eval_set(sample_config(sample_corpus), path, samples=16)
    model = model_dir(tmp_path, "m", {})
    assert E.main(["--model", model, "--eval-set", str(path), "--output", str(tmp_path / "r.json"),
                   "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    stat = (tmp_path / "m" / "model.safetensors").stat()
    assert result["model_file"] == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert 0 <= result["accuracy"] <= 1 and result["loss"] > 0
    assert E.main(["--model", model, "--eval-set", str(tmp_path / "none.npz"), "--output", "x"]) == 2


def test_unigram_reference_counts_only_the_training_documents():
    tokens = np.array([9, 9, 9, 7, 7, 5, 5, 5, 5, 5], dtype=np.uint16)  # docs [0,3) [3,5) [5,10): train = 0 and 1
    split = SimpleNamespace(doc_ids=np.array([1, 0]), doc_pointers=np.array([0, 6, 10]),
                            doc_lengths=np.array([3, 2, 5]), dataset=SimpleNamespace(dtype=np.dtype(np.uint16),
                                                                                     tokens=tokens))
    data = SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=10), train_splits=[split])
    labels = np.array([[-100, 9, 7], [5, -100, -100]])
    ref = E.unigram_reference(data, labels)
    p = (np.array([0, 0, 0, 0, 0, 0, 0, 2, 0, 3]) + 1) / (5 + 10)  # 9 x3, 7 x2 counted; the 5s are not training
    assert ref["training_tokens_counted"] == 5
    assert ref["loss"] == pytest.approx(-np.mean(np.log([p[9], p[7], p[5]])))
    assert ref["accuracy"] == pytest.approx(1 / 3)  # the most frequent training token, 9, is one target of three
