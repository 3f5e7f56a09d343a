"""A model directory users can hand around: config.json (ModelConfig) + model.safetensors (state dict).

This is megabert's inference/export format: what a training checkpoint exports to, what fine-tuning starts from,
and what the Hugging Face / MosaicBERT converters read and write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, TypeVar

import torch
import torch.nn as nn

from megabert.config import ModelConfig, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound=nn.Module)


def save_pretrained(model: nn.Module, directory: str | Path, cfg: ModelConfig, extra: Optional[dict] = None) -> Path:
    """Writes config.json and model.safetensors (contiguous CPU tensors; tied weights stored once)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps({"model": to_dict(cfg), **(extra or {})}, indent=2) + "\n")
    return directory


def load_model_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a megabert model directory?")
    return from_dict(ModelConfig, json.loads(path.read_text())["model"], "model.")


def load_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a megabert model directory?")
    return load_file(str(path))
