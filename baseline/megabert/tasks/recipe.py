"""Fine-tuning hyperparameters: one JSON file per GLUE task under configs/glue/ (MosaicBERT's recipe).

    {"task": "rte", "lr": 1e-5, "weight_decay": 1e-5, "epochs": 3, "batch_size": 16, "seq_len": 256,
     "seeds": [19, 8364, 717, 10536, 90166], "init_from": "mnli"}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megabert.config import ConfigError, from_dict


@dataclass
class Recipe:
    task: str = "custom"
    """Task the recipe is for (informational; the command line chooses the task)."""
    lr: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 5e-6
    """Decoupled weight decay: each step shrinks weights by weight_decay x lr_t / lr (MosaicBERT's
    DecoupledAdamW), not by lr_t x weight_decay as torch's AdamW would with the same number."""
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    epochs: int = 3
    """Passes over the training set; the dev set is evaluated after each."""
    batch_size: int = 32
    """Examples per optimizer step."""
    eval_batch_size: int = 128
    """Examples per evaluation forward."""
    seq_len: int = 256
    """Maximum tokens per example ([CLS]/[SEP] included); may exceed the pretraining length with ALiBi."""
    warmup_fraction: float = 0.06
    """Fraction of the steps warming up linearly from 0."""
    final_lr_fraction: float = 0.0
    """The lr decays linearly to this fraction of the peak."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this (0 disables; MosaicBERT's GLUE recipe does not clip)."""
    classifier_dropout: Optional[float] = None
    """Dropout before the classifier; None uses the model's hidden_dropout."""
    seeds: list = field(default_factory=lambda: [19])
    """One run per seed; the median of the runs is reported."""
    init_from: Optional[str] = None
    """Start from another task's fine-tuned checkpoint (RTE, MRPC and STS-B start from 'mnli')."""
    precision: str = "auto"
    """'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'."""

    def validate(self) -> None:
        checks = [
            (self.lr > 0, "lr must be > 0"), (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.epochs > 0, "epochs must be > 0"), (self.batch_size > 0, "batch_size must be > 0"),
            (self.eval_batch_size > 0, "eval_batch_size must be > 0"), (self.seq_len >= 8, "seq_len must be >= 8"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (0 <= self.final_lr_fraction <= 1, "final_lr_fraction must be in [0, 1]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"), (len(self.seeds) > 0, "seeds must not be empty"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe for {self.task}: {message}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"recipe file {path} is not valid JSON: {e}") from None
    recipe = from_dict(Recipe, data, f"{path.name}: ")
    recipe.validate()
    return recipe


def glue_recipe(task: str, recipe_dir: str | Path) -> Recipe:
    """configs/glue/<task>.json."""
    return load_recipe(Path(recipe_dir) / f"{task}.json")
