"""Fine-tuning hyperparameters: one JSON file per GLUE task under configs/glue/ (MosaicBERT's recipe).

    {"task": "rte", "optim": {"lr": 1e-5, "weight_decay": 1e-5}, "schedule": {"warmup_fraction": 0.06},
     "epochs": 3, "batch_size": 16, "seq_len": 256, "seeds": [19, 8364, 717, 10536, 90166], "init_from": "mnli"}

The optimizer and schedule are pretraining's own sections (OptimConfig, ScheduleConfig) and are built by the same
functions (megabert.train.optimizer), so decoupled weight decay means the same thing in both, and biases and
LayerNorm parameters are not decayed in either. The schedule's total_steps is derived from epochs x batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megabert.config import ConfigError, OptimConfig, ScheduleConfig, from_dict, read_json_file


_MOVED = {"lr", "weight_decay", "betas", "eps", "grad_clip", "warmup_fraction", "final_lr_fraction"}


@dataclass
class Recipe:
    task: str = "custom"
    """Task the recipe is for (informational; the command line chooses the task)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=5e-6, grad_clip=0.0))
    """Decoupled AdamW, as in pretraining (weight decay: each step shrinks weights by weight_decay x lr_t / lr).
    MosaicBERT's GLUE recipe does not clip gradients (grad_clip 0)."""
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.06,
                                                                             final_lr_fraction=0.0))
    """Linear warm-up, then linear decay; total_steps is set from epochs x batches per epoch."""
    epochs: int = 3
    """Passes over the training set; the dev set is evaluated after each."""
    batch_size: int = 32
    """Examples per optimizer step."""
    eval_batch_size: int = 128
    """Examples per evaluation forward."""
    seq_len: int = 256
    """Maximum tokens per example ([CLS]/[SEP] included); may exceed the pretraining length with ALiBi."""
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
            (self.epochs > 0, "epochs must be > 0"), (self.batch_size > 0, "batch_size must be > 0"),
            (self.eval_batch_size > 0, "eval_batch_size must be > 0"), (self.seq_len >= 8, "seq_len must be >= 8"),
            (len(self.seeds) > 0, "seeds must not be empty"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe for {self.task}: {message}")
        try:
            self.optim.validate()
            self.schedule.validate()
        except ConfigError as e:
            raise ConfigError(f"recipe for {self.task}: {e}") from None

    def schedule_for(self, total_steps: int) -> ScheduleConfig:
        """The schedule of a run of `total_steps` optimizer steps."""
        return dataclasses.replace(self.schedule, total_steps=max(1, total_steps))

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> "Recipe":
        flat = sorted(set(data) & _MOVED)
        if flat:
            raise ConfigError(f"{where}recipe keys {', '.join(flat)} now live in its sections: lr, weight_decay, "
                              f"betas, eps and grad_clip under \"optim\", warmup_fraction and final_lr_fraction under "
                              f"\"schedule\" (see configs/glue/*.json)")
        defaults = cls()
        data = dict(data)
        for name in ("optim", "schedule"):  # a section given in part keeps the recipe's values for the rest
            if isinstance(data.get(name), dict):
                data[name] = {**dataclasses.asdict(getattr(defaults, name)), **data[name]}
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    recipe = Recipe.from_dict(read_json_file(path, "recipe file"), f"{path.name}: ")
    recipe.validate()
    return recipe


def glue_recipe(task: str, recipe_dir: str | Path) -> Recipe:
    """configs/glue/<task>.json."""
    return load_recipe(Path(recipe_dir) / f"{task}.json")
