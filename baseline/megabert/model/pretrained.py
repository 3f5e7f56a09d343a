"""A model directory users can hand around: config.json (ModelConfig) + model.safetensors (state dict).

This is megabert's inference/export format: what a training checkpoint exports to, what fine-tuning starts from,
and what the Hugging Face / MosaicBERT converters read and write.
"""

from __future__ import annotations

import json
import shutil
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


# The tokenizer travels inside the model directory (config.json's "tokenizer" entry names files copied beside the
# weights), so fine-tuning and export find it without flags.

WORDPIECE_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # type -> lowercase
MODEL_FILE_NAMES = {"HuggingFaceTokenizer": "tokenizer.json", "SentencePieceTokenizer": "tokenizer.model"}
SUPPORTED_TYPES = (*WORDPIECE_TYPES, *MODEL_FILE_NAMES)


class TokenizerError(ValueError):
    """The model directory has no usable tokenizer; the message says which flag or file supplies one."""


def attach_tokenizer(model_dir: str | Path, tokenizer_type: str, vocab_file: Optional[str] = None,
                     tokenizer_model: Optional[str] = None) -> dict:
    """Copies the tokenizer files into `model_dir` and records them in its config.json. Returns the entry."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise TokenizerError(f"{config_path} not found: save the model (save_pretrained) before its tokenizer")
    if tokenizer_type in WORDPIECE_TYPES:
        source, field, name = vocab_file, "vocab_file", "vocab.txt"
    elif tokenizer_type in MODEL_FILE_NAMES:
        source, field, name = tokenizer_model, "tokenizer_model", MODEL_FILE_NAMES[tokenizer_type]
        if tokenizer_model and Path(tokenizer_model).is_dir():  # a Hugging Face tokenizer directory
            source = str(Path(tokenizer_model) / "tokenizer.json")
    else:
        raise TokenizerError(f"tokenizer type {tokenizer_type!r} is not supported; use one of "
                             f"{', '.join(SUPPORTED_TYPES)}")
    if not source or not Path(source).is_file():
        raise TokenizerError(f"tokenizer type {tokenizer_type} needs {field} pointing at an existing file, "
                             f"got {source!r}")
    if Path(source).resolve() != (model_dir / name).resolve():
        shutil.copyfile(source, model_dir / name)
    entry = {"tokenizer_type": tokenizer_type, field: name}
    config = json.loads(config_path.read_text())
    config["tokenizer"] = entry
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return entry


def tokenizer_entry(model_dir: str | Path) -> Optional[dict]:
    """The "tokenizer" entry of the model dir's config.json (file names relative to the dir), or None."""
    config_path = Path(model_dir) / CONFIG_NAME
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("tokenizer")
