"""A model directory users can hand around: config.json (ModelConfig) + model.safetensors (state dict).

This is megabert's inference/export format: what a training checkpoint exports to, what fine-tuning starts from,
and what the Hugging Face / MosaicBERT converters read and write. The model classes load and save it themselves
through PretrainedMixin:

    model = MosaicBertForMaskedLM.from_pretrained("runs/base/model")
    model.save_pretrained("copy/")                          # tokenizer files and config.json entries carried over
    classifier = MosaicBertForSequenceClassification.from_pretrained("runs/base/model", num_labels=3)

Files are written atomically (a temporary file renamed over the target) with mode 0644, so a directory handed to
others is readable by them and never half written.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch
import torch.nn as nn

from megabert.config import ModelConfig, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
"""What marks a training checkpoint (step_N/), which is not a model directory."""
FILE_MODE = 0o644
DIR_MODE = 0o755

M = TypeVar("M", bound=nn.Module)
log = logging.getLogger(__name__)


class ModelDirError(ValueError):
    """A directory is not a usable megabert model directory; the message says what it is and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) into a temporary file beside `path`, make it 0644, rename it over `path`: readers see the old file
    or the whole new one, and others can read it (safetensors and tempfile create files 0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def copy_atomically(source: str | Path, path: Path) -> Path:
    return write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def make_shared_dir(path: Path) -> Path:
    """mkdir -p; the directories it creates get mode 0755, so files meant for others can be reached."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Contiguous CPU copies; tensors that share memory (tied weights) are written as separate copies, which
    safetensors requires."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if tensor.data_ptr() in seen:
            tensors[key] = tensor.clone()
        seen.add(tensors[key].data_ptr())
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_pretrained(model: nn.Module, directory: str | Path, cfg: ModelConfig, extra: Optional[dict] = None) -> Path:
    """Writes config.json and model.safetensors (contiguous CPU tensors; tied weights stored once)."""
    directory = make_shared_dir(Path(directory))
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME)
    content = {"model": to_dict(cfg), **(extra or {})}
    write_text_atomically(directory / CONFIG_NAME, json.dumps(content, indent=2) + "\n")
    return directory


EXPORT_COMMAND = "python -m megabert.checkpoint.export"
"""The command that turns a training checkpoint into a model directory."""


def checkpoint_hint(directory: Path) -> Optional[str]:
    """What to do when `directory` is a training checkpoint (step_N/) or a directory of them, else None."""
    if (directory / TRAINER_STATE_NAME).is_file():
        return (f"{directory} is a training checkpoint, not a model directory; export it first: "
                f"{EXPORT_COMMAND} {directory} OUT")
    if directory.is_dir() and any((step / TRAINER_STATE_NAME).is_file() for step in directory.glob("step_*")):
        return (f"{directory} is a directory of training checkpoints, not a model directory; export the latest "
                f"first: {EXPORT_COMMAND} {directory} OUT")
    return None


def read_config_json(directory: str | Path) -> dict:
    """A megabert model dir's config.json, with an error that says what the directory is when it is not one."""
    directory = Path(directory)
    hint = checkpoint_hint(directory)
    if hint:
        raise ModelDirError(hint)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a megabert model directory?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path} is not valid JSON ({e}); a megabert model dir's config.json is written by "
                            f"save_pretrained") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        if isinstance(config, dict) and "model_type" in config:
            raise ModelDirError(f"{path} is a Hugging Face config (model_type {config['model_type']!r}), not a "
                                f"megabert model dir's; import it first: python tools/convert_checkpoint.py "
                                f"from-hf {directory} OUT (from-mosaic for MosaicBERT checkpoints)")
        raise ModelDirError(f"{path} has no 'model' section (the ModelConfig): it is not a megabert model dir's "
                            f"config.json, which save_pretrained and {EXPORT_COMMAND} write")
    return config


def load_model_config(directory: str | Path) -> ModelConfig:
    return from_dict(ModelConfig, read_config_json(directory)["model"], "model.")


def load_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        hint = checkpoint_hint(directory)
        if hint:
            raise ModelDirError(hint)
        if any(directory.glob("model-tp*-of-*.safetensors")):
            raise FileNotFoundError(f"{path} not found: {directory} holds tensor-parallel shards; merge them first: "
                                    f"python tools/convert_checkpoint.py merge-tp {directory} OUT")
        raise FileNotFoundError(f"{path} not found: is {directory} a megabert model directory?")
    return load_file(str(path))


# ---------------------------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained on the model classes
# ---------------------------------------------------------------------------------------------------------------

RUNTIME_FIELDS = ("attention_backend", "unpad", "low_precision_layernorm", "sparse_mlm_head", "hidden_dropout",
                  "attention_dropout")
"""ModelConfig fields from_pretrained may override: they change how the model computes, not its weights."""
FRESH_HEAD_PREFIXES = ("pooler.", "classifier.")
"""A classifier may start from an encoder without one (fine-tuning); every other tensor must be in the dir."""


class PretrainedMixin:
    """`from_pretrained(dir)` and `save_pretrained(dir)` for megabert's model classes, on megabert model dirs.

    from_pretrained takes what the class needs from any model dir: the encoder alone, the MLM model (its head must
    be there), or a sequence classifier (its head is read when the dir holds one, else newly initialised for
    fine-tuning, with num_labels given). Loading is strict otherwise: a missing or misshapen tensor is an error.
    """

    cfg: ModelConfig

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, *, num_labels: Optional[int] = None,
                        classifier_dropout: Optional[float] = None, **overrides) -> M:
        """`overrides`: ModelConfig fields that change computation only (RUNTIME_FIELDS), e.g.
        attention_backend="sdpa". num_labels / classifier_dropout: for MosaicBertForSequenceClassification."""
        directory = Path(directory)
        config = read_config_json(directory)
        cfg = from_dict(ModelConfig, config["model"], "model.")
        unknown = sorted(set(overrides) - set(RUNTIME_FIELDS))
        if unknown:
            raise TypeError(f"from_pretrained cannot override {', '.join(unknown)}: only fields that leave the "
                            f"weights unchanged ({', '.join(RUNTIME_FIELDS)})")
        cfg = dataclasses.replace(cfg, **overrides)
        state = load_state_dict(directory)
        kwargs = {}
        accepted = inspect.signature(cls.__init__).parameters
        if "num_labels" in accepted:
            kwargs["num_labels"] = _num_labels(state, config, num_labels, directory)
            kwargs["classifier_dropout"] = classifier_dropout
        elif num_labels is not None or classifier_dropout is not None:
            raise TypeError(f"{cls.__name__} has no classifier: num_labels and classifier_dropout do not apply")
        model = cls(cfg, **kwargs)
        model.load_state_dict(_select(model, state, directory))
        # what save_pretrained carries over: the dir's other config.json entries (tokenizer, task, data, ...)
        model._pretrained_source = (directory, {k: v for k, v in config.items() if k != "model"})
        return model

    def save_pretrained(self, directory: str | Path, extra: Optional[dict] = None) -> Path:
        """config.json + model.safetensors. A model from from_pretrained carries its source dir's other
        config.json entries (tokenizer, task, data) and tokenizer files over; `extra` entries win."""
        directory = Path(directory)
        source, carried = getattr(self, "_pretrained_source", (None, {}))
        carried = dict(carried)
        files = _tokenizer_files(carried.get("tokenizer"))
        if files and not all((source / name).is_file() for name in files):
            log.warning("the tokenizer files of %s are gone: %s is saved without a tokenizer", source, directory)
            carried.pop("tokenizer")
            files = []
        make_shared_dir(directory)
        for name in files:
            if (source / name).resolve() != (directory / name).resolve():
                copy_atomically(source / name, directory / name)
        # the module-level function of the same name writes the files
        return save_pretrained(self, directory, self.cfg, {**carried, **(extra or {})})


def _tokenizer_files(entry: Optional[dict]) -> list[str]:
    if not entry:
        return []
    return [entry[k] for k in ("vocab_file", "tokenizer_model") if entry.get(k)]


def _num_labels(state: dict, config: dict, requested: Optional[int], directory: Path) -> int:
    if "classifier.weight" in state:
        found = state["classifier.weight"].shape[0]
        if requested is not None and requested != found:
            raise ModelDirError(f"{directory} holds a classifier with {found} labels, not {requested}; leave "
                                f"num_labels out to load it, or start from the pretrained model dir")
        return found
    task = config.get("task") or {}
    if requested is None:
        raise TypeError(f"{directory} holds no classifier: pass num_labels (1 for regression) to start one")
    if task.get("labels") and len(task["labels"]) != requested:
        log.warning("%s records %d task labels; building a classifier with %d", directory, len(task["labels"]),
                    requested)
    return requested


def _select(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of `state` that `model` has, under its names; a fresh classification head where the dir has
    none. Errors name what is missing."""
    wanted = model.state_dict()
    if not any(k.startswith("bert.") for k in wanted):  # the bare encoder: its keys are the 'bert.' sub-dict
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    missing = [k for k in wanted if k not in state]
    fresh = [k for k in missing if k.startswith(FRESH_HEAD_PREFIXES)]
    if len(fresh) != len(missing):
        absent = [k for k in missing if k not in fresh]
        what = "an MLM head" if any(k.startswith("head.") for k in absent) else "these tensors"
        raise ModelDirError(f"{directory} lacks {what} for {type(model).__name__}: {absent[:4]}"
                            f"{' ...' if len(absent) > 4 else ''}")
    if fresh:
        log.warning("%s has no classifier: %s newly initialised (fine-tune before use)", directory, ", ".join(fresh))
    selected = {k: state[k] for k in wanted if k in state}
    selected.update({k: wanted[k] for k in fresh})
    return selected


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
    write_text_atomically(config_path, json.dumps(config, indent=2) + "\n")
    return entry


def tokenizer_entry(model_dir: str | Path) -> Optional[dict]:
    """The "tokenizer" entry of the model dir's config.json (file names relative to the dir), or None."""
    config_path = Path(model_dir) / CONFIG_NAME
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("tokenizer")
