"""Tiny megabert model dirs with every tensor randomised, batches of each shape the export must handle."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.model.pretrained import attach_tokenizer, save_pretrained
from tests.tasks.tiny_model import tiny_config

PRETRAINING_SEQ_LEN = 32
SWITCHES = {  # every position / MLP combination; 6 heads: ALiBi slopes of a head count that is not a power of two
    "mosaicbert": dict(hidden_size=48, num_heads=6),
    "alibi_gelu": dict(mlp_type="gelu"),
    "learned_geglu": dict(position_embedding="learned"),
}
LABELS = ["entailment", "neutral", "contradiction"]


def vocab_size(vocab_file: Path) -> int:
    return sum(1 for _ in open(vocab_file))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor away from its initial value (LayerNorm weights included), so a dropped, swapped or
    re-initialised tensor shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() == 1 else 0.02))


def model_dir(directory: Path, vocab_file: Path, head: str = "mlm", seed: int = 0,
              **overrides) -> tuple[Path, ModelConfig]:
    """A megabert model dir with the vocab attached: 'mlm' as pretraining exports it, or a fine-tuned
    'classifier' (LABELS) / 'regressor' as tools/run_glue.py saves it (megabert.tasks.finetune.save_finetuned)."""
    cfg = tiny_config(vocab_size(vocab_file), **overrides)
    torch.manual_seed(seed)
    if head == "mlm":
        model = MosaicBertForMaskedLM(cfg)
        randomise(model, seed + 1)
        save_pretrained(model, directory, cfg, extra={"data": {"seq_len": PRETRAINING_SEQ_LEN}})
        attach_tokenizer(directory, "BertWordPieceLowerCase", vocab_file=str(vocab_file))
        return directory, cfg
    from megabert.tasks.finetune import save_finetuned
    from megabert.tasks.task import TaskSpec

    pretrained, _ = model_dir(directory.with_name(directory.name + "_pretrained"), vocab_file, "mlm", seed,
                              **overrides)
    regression = head == "regressor"
    spec = TaskSpec(name="stsb" if regression else "mnli", train_file="train.tsv",
                    labels=None if regression else LABELS, regression=regression)
    model = MosaicBertForSequenceClassification(cfg, 1 if regression else len(LABELS))
    randomise(model, seed + 2)
    save_finetuned(model, cfg, directory, str(pretrained), spec)
    return directory, cfg


def batches(vocab: int, learned_positions: bool, max_positions: int) -> dict[str, tuple]:
    """name -> (input_ids, attention_mask, token_type_ids) [B, S]."""
    gen = torch.Generator().manual_seed(11)

    def batch(lengths: list[int], seq: int, mask: Optional[bool] = True) -> tuple:
        ids = torch.randint(5, vocab, (len(lengths), seq), generator=gen)
        attention = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()  # right padding
        types = torch.zeros_like(ids)
        types[:, seq // 2:] = 1
        return ids, attention if mask else None, types

    out = {
        "unpadded": batch([20, 20], 20),
        "unpadded_no_mask": batch([20, 20], 20, mask=False),
        "padded": batch([20, 14], 20),
        "mixed_lengths": batch([24, 3, 17, 1], 24),
    }
    if not learned_positions:  # ALiBi extrapolates past the pretraining length; a learned table stops at its size
        out["longer_than_pretraining"] = batch([3 * PRETRAINING_SEQ_LEN, 2 * PRETRAINING_SEQ_LEN + 5],
                                               3 * PRETRAINING_SEQ_LEN)
    else:
        assert max_positions >= 24
    return out


def real_tokens(mask: Optional[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    return mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
