"""One masked-LM evaluation set per study, and the evaluation of every finished model on it.

The set is built once, from the validation split with the study's seed at 15% masking (the trainer's own
validation masking, megabert.data), and saved with its metadata: every variant is then scored on the same tokens
masked at the same positions, whatever masking rate, head or padding it trained with. Its metadata also holds a
unigram reference: the loss and accuracy of predicting each masked token from the training split's token
frequencies alone, the level a model that ignores context sits at (the "unigram plateau").

    python -m megabert.study.evaluation --model runs/.../model --eval-set study/eval_set.npz --output eval.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from megabert.config import TrainConfig

ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
IGNORE_INDEX = -100
UNIGRAM_MAX_TOKENS = 100_000_000
"""Training tokens counted for the unigram reference (the first this many of each dataset's training split)."""
PLATEAU_FRACTION = 0.95
"""A validation loss above this fraction of the unigram loss counts as on the unigram plateau."""


class EvaluationError(ValueError):
    """The evaluation set or a model cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# The evaluation set
# ---------------------------------------------------------------------------------------------------------------


def masked_positions_digest(labels: np.ndarray) -> str:
    """sha256 of which positions are masked and with which target: equal for two sets exactly when they mask the
    same tokens of the same samples."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def eval_set_settings(cfg: TrainConfig, samples: int, mask_prob: float, seed: Optional[int]) -> dict[str, Any]:
    """What the set depends on: a set built with other settings is a different set."""
    data = cfg.data
    return {"data_path": list(data.data_path), "split": data.split, "seq_len": data.seq_len,
            "sample_mode": data.sample_mode, "tokenizer_type": data.tokenizer_type, "vocab_file": data.vocab_file,
            "tokenizer_model": data.tokenizer_model, "seed": cfg.seed if seed is None else seed,
            "mask_prob": mask_prob, "whole_word_masking": data.whole_word_masking, "samples_requested": samples}


def build_eval_set(cfg: TrainConfig, path: str | Path, samples: int, mask_prob: float = 0.15,
                   seed: Optional[int] = None) -> dict[str, Any]:
    """Writes `path` (.npz: input_ids, attention_mask, token_type_ids, labels [N, seq_len]) and `path`.json (its
    settings, masked-token count and digest, unigram reference) unless a set with the same settings is there.
    Returns the metadata. A set with other settings is an error: the runs evaluated on it would not compare."""
    from megabert.config import replace
    from megabert.data import build_mlm_data

    path = Path(path)
    meta_path = path.with_suffix(".json")
    settings = eval_set_settings(cfg, samples, mask_prob, seed)
    if meta_path.is_file() and path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["settings"] != settings:
            changed = sorted(k for k in settings if meta["settings"].get(k) != settings[k])
            raise EvaluationError(f"{path} was built with other settings ({', '.join(changed)}); delete {path} and "
                                  f"{meta_path} to rebuild it (every run is then evaluated again)")
        return meta
    data_cfg = replace(cfg.data, eval_mask_prob=mask_prob, num_workers=0)
    micro = max(1, min(64, samples))
    data = build_mlm_data(data_cfg, seed=settings["seed"], micro_batch_size=micro)
    wanted = min(samples, data.num_valid_samples)
    parts: dict[str, list] = {name: [] for name in ARRAYS}
    have = 0
    for batch in data.valid_batches():
        for name in ARRAYS:
            parts[name].append(batch[name].numpy())
        have += len(batch["input_ids"])
        if have >= wanted:
            break
    arrays = {name: np.concatenate(parts[name])[:wanted] for name in ARRAYS}
    labels = arrays["labels"]
    unigram = unigram_reference(data, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    meta = {"settings": settings, "samples": int(len(labels)), "masked_tokens": int((labels != IGNORE_INDEX).sum()),
            "real_tokens": int(arrays["attention_mask"].sum()), "masked_positions_sha256": masked_positions_digest(labels),
            "unigram": unigram}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_eval_set(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"evaluation set {path} not found; the study runner builds it (tools/run_study.py)")
    with np.load(path) as f:
        missing = [name for name in ARRAYS if name not in f]
        if missing:
            raise EvaluationError(f"{path} lacks {missing}; delete it so the study runner rebuilds it")
        return {name: f[name] for name in ARRAYS}


def unigram_reference(data, labels: np.ndarray) -> dict[str, Any]:
    """Loss and accuracy on the masked tokens of `labels` of a model that predicts every token from the training
    split's token frequencies (add-one smoothed) and nothing else."""
    vocab = data.tokenizer.vocab_size
    counts = np.zeros(vocab, dtype=np.float64)
    counted = 0
    for split in data.train_splits:
        if not len(split.doc_ids):
            continue
        docs = np.sort(np.asarray(split.doc_ids))
        itemsize = split.dataset.dtype.itemsize
        first = int(split.doc_pointers[docs[0]]) // itemsize
        last = int(split.doc_pointers[docs[-1]]) // itemsize + int(split.doc_lengths[docs[-1]])
        tokens = np.asarray(split.dataset.tokens[first:min(last, first + UNIGRAM_MAX_TOKENS)])
        counts += np.bincount(tokens, minlength=vocab)[:vocab]
        counted += len(tokens)
    probs = (counts + 1.0) / (counts.sum() + vocab)
    targets = labels[labels != IGNORE_INDEX]
    return {"loss": float(-np.log(probs[targets]).mean()), "accuracy": float((targets == probs.argmax()).mean()),
            "training_tokens_counted": counted}


# ---------------------------------------------------------------------------------------------------------------
# Evaluating a model
# ---------------------------------------------------------------------------------------------------------------


def evaluate_model(model_dir: str | Path, eval_set: str | Path, device: str = "auto",
                   batch_size: int = 128) -> dict[str, Any]:
    """Validation MLM loss (token-weighted mean cross entropy over the masked tokens) and accuracy of a model dir
    on the study's evaluation set; bf16 autocast on a GPU, fp32 on the CPU."""
    import torch

    from megabert.model.bert import MosaicBertForMaskedLM
    from megabert.model.inputs import prepare_inputs
    from megabert.model.pretrained import load_model_config, load_state_dict

    arrays = load_eval_set(eval_set)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    cfg = load_model_config(model_dir)
    if cfg.position_embedding == "learned" and arrays["input_ids"].shape[1] > cfg.max_position_embeddings:
        raise EvaluationError(f"{model_dir} has {cfg.max_position_embeddings} learned positions, the evaluation set "
                              f"{arrays['input_ids'].shape[1]} tokens per sample")
    model = MosaicBertForMaskedLM(cfg)
    model.load_state_dict(load_state_dict(model_dir))
    model.to(dev).eval()
    loss_sum, correct, scored = 0.0, 0, 0
    digest = hashlib.sha256()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for start in range(0, len(arrays["labels"]), batch_size):
            batch = {name: torch.from_numpy(np.ascontiguousarray(arrays[name][start:start + batch_size]))
                     for name in ARRAYS}
            digest.update(np.ascontiguousarray(batch["labels"].numpy(), dtype=np.int64).tobytes())
            out = model(**prepare_inputs(batch, cfg, dev))
            selected = out.labels != IGNORE_INDEX
            n = int(selected.sum())
            expected = int((batch["labels"] != IGNORE_INDEX).sum())
            if n != expected:
                raise EvaluationError(f"{model_dir}: the model scored {n} tokens of a batch that masks {expected}")
            loss_sum += float(out.loss.float()) * n
            correct += int((out.logits.argmax(-1)[selected] == out.labels[selected]).sum())
            scored += n
    return {"loss": loss_sum / max(scored, 1), "accuracy": correct / max(scored, 1), "masked_tokens": scored,
            "samples": int(len(arrays["labels"])), "masked_positions_sha256": digest.hexdigest(),
            "perplexity": math.exp(min(loss_sum / max(scored, 1), 50.0)), "device": str(dev),
            "model_dir": str(model_dir)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="megabert model dir (config.json + model.safetensors)")
    p.add_argument("--eval-set", required=True, help="the study's eval_set.npz")
    p.add_argument("--output", required=True, help="JSON file to write the result to")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    try:
        result = evaluate_model(args.model, args.eval_set, args.device, args.batch_size)
    except (EvaluationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_file = Path(args.model) / "model.safetensors"
    result["model_file"] = {"size": model_file.stat().st_size, "mtime_ns": model_file.stat().st_mtime_ns}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} on {result['masked_tokens']} masked tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
