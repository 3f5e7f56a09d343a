"""Fine-tune one (task, seed) on one device: the loop every GLUE task and every user task runs through.

    model dir (encoder weights + tokenizer) --> MosaicBertForSequenceClassification(cfg, num_labels)
    decoupled AdamW, linear warm-up then linear decay, bf16 autocast on GPU (fp32 on CPU)
    evaluate every eval split after each epoch; the last epoch's metrics are the run's result
    optionally save the fine-tuned model (a megabert model dir) so other tasks can start from it (MNLI)

ALiBi has no position table, so `recipe.seq_len` may exceed the length the encoder was pretrained at; a model
with learned positions is limited to its table and is refused with a clear error before training.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForSequenceClassification
from megabert.model.pretrained import attach_tokenizer, load_model_config, load_state_dict, save_pretrained
from megabert.tasks.data import Examples, TaskData, load_task_data
from megabert.tasks.metrics import compute_metrics
from megabert.tasks.recipe import Recipe
from megabert.tasks.task import TaskError, TaskSpec
from megabert.tasks.tokenizer import PairEncoder, encode, load_tokenizer, resolve_tokenizer, training_run_config

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"


@dataclass
class Job:
    """One fine-tuning run. Plain data, so the runner can hand it to a worker process as JSON."""

    task: dict
    """TaskSpec.to_dict()."""
    recipe: dict
    """Recipe.to_dict()."""
    seed: int
    model_dir: str
    """Pretrained megabert model dir (encoder weights, config, tokenizer)."""
    output_dir: str
    """This run's directory: result.json, and model/ when save_model."""
    init_dir: Optional[str] = None
    """A fine-tuned model dir whose encoder and pooler replace the pretrained ones (MNLI -> RTE/MRPC/STS-B)."""
    save_model: bool = False
    device: str = "auto"
    """'auto' (cuda if available), 'cuda' or 'cpu'."""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def check_sequence_length(cfg: ModelConfig, seq_len: int, model_dir: str | Path) -> None:
    """Learned positions stop at their table; ALiBi extrapolates past the pretraining length."""
    if cfg.position_embedding == "learned" and seq_len > cfg.max_position_embeddings:
        raise TaskError(f"seq_len {seq_len} exceeds the learned position table of {model_dir} "
                        f"({cfg.max_position_embeddings} positions); lower seq_len (ALiBi models have no such limit)")
    pretrain_len = _pretraining_seq_len(model_dir)
    if pretrain_len and seq_len > pretrain_len:
        log.info("fine-tuning at seq_len %d, longer than the pretraining length %d%s", seq_len, pretrain_len,
                 " (ALiBi extrapolates)" if cfg.position_embedding == "alibi" else
                 " (positions past the pretraining length were never trained)")


def check_model_dir(model_dir: str | Path, seq_len: int) -> tuple[ModelConfig, PairEncoder]:
    """The model's config and tokenizer, checked against each other and against `seq_len` (cheap: no weights)."""
    cfg = load_model_config(model_dir)
    check_sequence_length(cfg, seq_len, model_dir)
    tokenizer = load_tokenizer(model_dir, seq_len)
    if tokenizer.tokenizer.vocab_size > cfg.vocab_size:
        raise TaskError(f"the tokenizer of {model_dir} has {tokenizer.tokenizer.vocab_size} tokens but the model "
                        f"only {cfg.vocab_size} embeddings: is it the tokenizer the model was pretrained with?")
    return cfg, tokenizer


def _pretraining_seq_len(model_dir: str | Path) -> Optional[int]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    run = training_run_config(model_dir) or {}
    return ((config.get("data") or {}).get("seq_len") or config.get("pretraining_seq_len")
            or (run.get("data") or {}).get("seq_len"))


def build_model(job: Job, num_labels: int) -> tuple[MosaicBertForSequenceClassification, ModelConfig]:
    """Classification model with the pretrained encoder (and, with init_dir, that run's encoder and pooler)."""
    cfg = load_model_config(job.model_dir)
    recipe = Recipe(**job.recipe)
    model = MosaicBertForSequenceClassification(cfg, num_labels, classifier_dropout=recipe.classifier_dropout)
    source = job.init_dir or job.model_dir
    if job.init_dir:
        init_cfg = load_model_config(job.init_dir)
        if _architecture(init_cfg) != _architecture(cfg):
            raise TaskError(f"{job.init_dir} was fine-tuned from a different architecture than {job.model_dir}")
    state = load_state_dict(source)
    wanted = {k: v for k, v in state.items() if k.startswith("bert.") or (job.init_dir and k.startswith("pooler."))}
    missing = [k for k in model.state_dict() if k.startswith("bert.") and k not in wanted]
    if missing:
        raise TaskError(f"{source} lacks encoder weights {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
                        f"is it a megabert model dir of this architecture?")
    # The classifier (and, from a pretrained MLM model, the pooler) starts fresh: its shape is the task's.
    model.load_state_dict(wanted, strict=False)
    for head in (model.pooler, model.classifier):
        _run_in_fp32(head)
    return model, cfg


def _run_in_fp32(module: nn.Module) -> None:
    """Runs `module` outside autocast. For the pooler and classifier: bf16 keeps 8 bits of mantissa, too few for
    regression outputs (STS-B scores collapse onto a few values; MosaicBERT runs STS-B in fp32) and cheap to
    avoid for a [B, H] head. Overrides the instance's forward, so parameter names stay the same."""
    inner = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return inner(x.float())

    module.forward = forward


def _architecture(cfg: ModelConfig) -> tuple:
    return (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
            cfg.position_embedding, cfg.mlp_type)


def decoupled_adamw(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """torch AdamW decays by lr_t * wd; MosaicBERT's decoupled decay is wd * lr_t / lr: pass wd / lr."""
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.eps,
                             weight_decay=recipe.weight_decay / recipe.lr)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, recipe: Recipe):
    warmup = int(recipe.warmup_fraction * total_steps)
    final = recipe.final_lr_fraction

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(final, 1.0 - (1.0 - final) * progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    ids: list
    type_ids: list
    labels: np.ndarray


def encode_examples(tokenizer, examples: Examples) -> Encoded:
    ids, type_ids = encode(tokenizer, examples.texts_a, examples.texts_b)
    return Encoded(ids, type_ids, examples.labels)


def collate(data: Encoded, index: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pads the selected examples to the longest among them: input_ids, token_type_ids, attention_mask [B, S]."""
    length = max(len(data.ids[i]) for i in index)
    input_ids = np.full((len(index), length), pad_id, dtype=np.int64)
    type_ids = np.zeros((len(index), length), dtype=np.int64)
    mask = np.zeros((len(index), length), dtype=np.int64)
    for row, i in enumerate(index):
        n = len(data.ids[i])
        input_ids[row, :n], type_ids[row, :n], mask[row, :n] = data.ids[i], data.type_ids[i], 1
    batch = {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": mask,
             "labels": data.labels[index]}
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TaskError("device 'cuda' requested but no GPU is visible")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, spec: TaskSpec, batch_size: int, pad_id: int, device: torch.device,
             precision: str) -> dict[str, float]:
    model.eval()
    # Sorting by length keeps padding (and the padded attention some backends build) small.
    order = np.argsort([len(x) for x in data.ids], kind="stable")
    outputs = np.empty(len(order), dtype=np.float32 if spec.regression else np.int64)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = collate(data, index, pad_id, device)
        with _autocast(device, precision):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits.float()
        outputs[index] = (logits[:, 0] if spec.regression else logits.argmax(-1)).cpu().numpy()
    model.train()
    return compute_metrics(spec.metrics, outputs, data.labels)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_job(job: Job, task_data: Optional[TaskData] = None) -> dict:
    """Trains and evaluates one run; writes and returns its result (metrics per eval split, history, timing)."""
    recipe = Recipe(**job.recipe)
    recipe.validate()
    data = task_data or load_task_data(TaskSpec.from_dict(job.task))
    spec = data.spec
    device = resolve_device(job.device)
    cfg, tokenizer = check_model_dir(job.model_dir, recipe.seq_len)

    seed_everything(job.seed)
    train = encode_examples(tokenizer, data.train)
    evals = {name: encode_examples(tokenizer, ex) for name, ex in data.evals.items()}
    model, cfg = build_model(job, spec.num_labels)
    model.to(device).train()
    optimizer = decoupled_adamw(model, recipe)
    steps_per_epoch = math.ceil(len(train.ids) / recipe.batch_size)
    scheduler = linear_schedule(optimizer, steps_per_epoch * recipe.epochs, recipe)
    generator = np.random.default_rng(job.seed)

    history, start, step = [], time.perf_counter(), 0
    for epoch in range(1, recipe.epochs + 1):
        order = generator.permutation(len(train.ids))
        loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for first in range(0, len(order), recipe.batch_size):
            batch = collate(train, order[first:first + recipe.batch_size], cfg.pad_token_id, device)
            with _autocast(device, recipe.precision):
                loss = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                             batch["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            step += 1
            if step % 100 == 0 and not torch.isfinite(loss_sum):
                raise FloatingPointError(f"{spec.name} seed {job.seed}: non-finite loss by step {step}; lower lr")
        train_loss = loss_sum.item() / steps_per_epoch
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{spec.name} seed {job.seed}: non-finite loss in epoch {epoch}; lower lr")
        metrics = {name: evaluate(model, enc, spec, recipe.eval_batch_size, cfg.pad_token_id, device,
                                  recipe.precision) for name, enc in evals.items()}
        history.append({"epoch": epoch, "step": step, "time_s": time.perf_counter() - start,
                        "train_loss": train_loss, "metrics": metrics})
        log.info("%s seed %d epoch %d: loss %.4f %s", spec.name, job.seed, epoch, history[-1]["train_loss"],
                 json.dumps(metrics))

    output_dir = Path(job.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = {"task": spec.name, "seed": job.seed, "metrics": history[-1]["metrics"], "history": history,
              "train_time_s": history[-1]["time_s"], "steps": step, "num_train": len(train.ids),
              "labels": spec.labels, "metric_names": spec.metrics, "is_glue": spec.is_glue,
              "model_dir": job.model_dir, "init_dir": job.init_dir, "device": str(device), "recipe": recipe.to_dict()}
    if job.save_model:
        save_finetuned(model, cfg, output_dir / "model", job.model_dir, spec)
        result["saved_model"] = str(output_dir / "model")
    (output_dir / RESULT_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def save_finetuned(model: nn.Module, cfg: ModelConfig, directory: Path, pretrained_dir: str, spec: TaskSpec) -> None:
    """A megabert model dir with the classification weights, the task's labels and the tokenizer."""
    save_pretrained(model, directory, cfg, extra={"task": {"name": spec.name, "labels": spec.labels,
                                                           "regression": spec.regression}})
    found = resolve_tokenizer(pretrained_dir)
    if found:
        attach_tokenizer(directory, **found)
