"""One config, one source of truth.

Typed dataclasses, one per concern. A run is described by a single JSON file whose top-level keys are the
sections of `TrainConfig`; the command line overrides any field with `--section.key value`. Everything that is
derived (the DeepSpeed JSON, micro-batch and accumulation) is computed from this, never written twice.

Validation runs before anything heavy starts (no torch import here) and every error names the field and the fix.
Each field carries a docstring (the string literal below it); `describe_fields` reads them for `--help`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import json
import math
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Architecture of the encoder. Every MosaicBERT modification is a switch; all off gives a plain BERT."""

    vocab_size: int = 30528
    """Embedding rows. MosaicBERT pads BERT's 30522 to 30528 (a multiple of 64) for fast matmuls."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of transformer layers."""
    num_heads: int = 12
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 3072
    """MLP width. With GeGLU the input projection has 2 x this many outputs (value and gate)."""
    type_vocab_size: int = 2
    """Token-type (segment) vocabulary."""
    max_position_embeddings: int = 512
    """Learned-position table size (used only when position_embedding == 'learned')."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings and on each residual branch."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities. MosaicBERT uses 0.0; the fused kernels support only 0.0."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights (BERT init)."""
    pad_token_id: int = 0
    """Token id of [PAD]; its embedding row is zero-initialised."""
    position_embedding: str = "alibi"
    """'alibi' (MosaicBERT: attention bias, no position embeddings) or 'learned' (BERT)."""
    mlp_type: str = "geglu"
    """'geglu' (MosaicBERT) or 'gelu' (BERT)."""
    unpad: bool = True
    """Remove padding once after the embeddings and run every layer on varlen tokens [T, H]."""
    low_precision_layernorm: bool = True
    """Run LayerNorm in the autocast dtype (bf16) instead of upcasting to fp32."""
    sparse_mlm_head: bool = True
    """Run the MLM head only on masked positions instead of every token."""
    attention_backend: str = "auto"
    """'auto' (flash_attn > triton > sdpa > eager), or one of 'flash_attn', 'triton', 'sdpa', 'eager'."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        _check(self.hidden_size > 0 and self.num_heads > 0, "model.hidden_size and model.num_heads must be > 0")
        _check(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size ({self.hidden_size}) is not divisible by model.num_heads ({self.num_heads}); "
            f"choose num_heads among {_divisors(self.hidden_size, 64)}",
        )
        _check(
            self.vocab_size % 64 == 0,
            f"model.vocab_size ({self.vocab_size}) is not a multiple of 64; pad it to "
            f"{-(-self.vocab_size // 64) * 64} (tools/train_tokenizer.py pads automatically)",
        )
        _check_choice("model.position_embedding", self.position_embedding, ("alibi", "learned"))
        _check_choice("model.mlp_type", self.mlp_type, ("geglu", "gelu"))
        _check_choice("model.attention_backend", self.attention_backend,
                      ("auto", "flash_attn", "triton", "sdpa", "eager"))
        _check(0.0 <= self.hidden_dropout < 1.0, "model.hidden_dropout must be in [0, 1)")
        _check(0.0 <= self.attention_dropout < 1.0, "model.attention_dropout must be in [0, 1)")
        for name in ("num_layers", "intermediate_size", "type_vocab_size", "max_position_embeddings"):
            _check(getattr(self, name) > 0, f"model.{name} must be > 0")


@dataclass
class DataConfig:
    """Where the tokens come from and how they become masked batches."""

    data_path: list = field(default_factory=list)
    """Dataset prefixes (without .bin/.idx), optionally weighted: ["0.7", "c4/a_text", "0.3", "wiki/b_text"]."""
    tokenizer_type: str = "BertWordPieceLowerCase"
    """Megatron tokenizer flag: BertWordPieceLowerCase | BertWordPieceCase | SentencePieceTokenizer |
    HuggingFaceTokenizer."""
    vocab_file: Optional[str] = None
    """WordPiece vocab.txt (BertWordPiece*)."""
    tokenizer_model: Optional[str] = None
    """SentencePiece .model or Hugging Face tokenizer.json."""
    seq_len: int = 128
    """Tokens per sample, [CLS] and [SEP] included."""
    sample_mode: str = "document"
    """'document' (MosaicBERT: one document per sample, truncated, padded; the model unpads) or 'packed'
    (documents joined with [SEP] to fill seq_len)."""
    split: str = "969,30,1"
    """Train/valid/test weights over documents."""
    mask_prob: float = 0.3
    """MLM masking rate for training (MosaicBERT: 30%)."""
    eval_mask_prob: float = 0.15
    """MLM masking rate for evaluation."""
    whole_word_masking: bool = False
    """Mask whole words (WordPiece '##' continuations follow their head)."""
    num_workers: int = 1
    """DataLoader worker processes per rank."""
    prefetch_depth: int = 2
    """Micro-batches the trainer prepares ahead on a background thread (counts, packed inputs with the unpadding
    bookkeeping, page-locked buffer) while the device computes; 0 prepares them in the training loop."""
    cache_dir: Optional[str] = None
    """Where sample indices are cached; default: beside the data."""

    def validate(self) -> None:
        _check(self.seq_len >= 8, "data.seq_len must be >= 8")
        _check_choice("data.sample_mode", self.sample_mode, ("document", "packed"))
        _check(0.0 < self.mask_prob < 1.0, "data.mask_prob must be in (0, 1)")
        _check(0.0 < self.eval_mask_prob < 1.0, "data.eval_mask_prob must be in (0, 1)")
        _check_choice("data.tokenizer_type", self.tokenizer_type,
                      ("BertWordPieceLowerCase", "BertWordPieceCase", "SentencePieceTokenizer",
                       "HuggingFaceTokenizer"))
        try:
            parts = [float(x) for x in str(self.split).replace("/", ",").split(",")]
        except ValueError:
            raise ConfigError(f"data.split ({self.split!r}) must be comma-separated numbers, e.g. '969,30,1'")
        _check(len(parts) <= 3 and sum(parts) > 0 and min(parts) >= 0,
               f"data.split ({self.split!r}) needs up to three non-negative weights with a positive sum")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")
        _check(self.prefetch_depth >= 0, "data.prefetch_depth must be >= 0")


@dataclass
class OptimConfig:
    """Decoupled AdamW, as MosaicBERT."""

    lr: float = 5e-4
    """Peak learning rate."""
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 1e-5
    """Decoupled weight decay: parameters shrink by weight_decay * lr / peak_lr per step (not by lr * wd)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""

    def validate(self) -> None:
        _check(self.lr > 0, "optim.lr must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               "optim.betas must be two numbers in [0, 1)")
        _check(self.eps > 0, "optim.eps must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip must be >= 0")


@dataclass
class ScheduleConfig:
    """Linear warm-up, then linear decay to a fraction of the peak."""

    total_steps: int = 70000
    """Optimizer steps in the run. With budget_minutes, the budget fixes the count instead (this value only
    shapes the warm-up of the first steps, while the step rate is measured)."""
    warmup_fraction: float = 0.06
    """Fraction of total_steps spent warming up linearly from 0."""
    final_lr_fraction: float = 0.02
    """The lr decays linearly to this fraction of the peak at total_steps."""
    budget_minutes: Optional[float] = None
    """Wall-clock budget of the training loop. The run measures its step rate over its first steps, then fixes
    total_steps so that the whole schedule (warm-up, decay to the floor) ends within the budget, the time already
    spent included; checkpoints record the count, so a resumed run keeps it (megabert/train/budget.py). None:
    the run takes total_steps steps."""

    def validate(self) -> None:
        _check(self.total_steps > 0, "schedule.total_steps must be > 0")
        _check(self.budget_minutes is None or (math.isfinite(self.budget_minutes) and self.budget_minutes > 0),
               f"schedule.budget_minutes ({self.budget_minutes}) must be a positive number of minutes, or null for "
               f"a run of schedule.total_steps steps")
        _check(0 <= self.warmup_fraction < 1, "schedule.warmup_fraction must be in [0, 1)")
        _check(0 <= self.final_lr_fraction <= 1, "schedule.final_lr_fraction must be in [0, 1]")


@dataclass
class ParallelConfig:
    """How the model is spread over processes, and in what precision it computes."""

    tensor_parallel_size: int = 1
    """GPUs that split each layer (Megatron style); data parallel = world_size / this."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3 over the data-parallel group (3 only with tensor_parallel_size 1)."""
    precision: str = "bf16"
    """'bf16' (default), 'fp16' (GPU only, loss scaling) or 'fp32'."""
    backend: str = "auto"
    """Distributed backend: 'auto' (nccl on GPU, gloo on CPU), 'nccl' or 'gloo'."""
    device: str = "auto"
    """'auto' (cuda when available), 'cuda' or 'cpu'."""
    compile: Optional[bool] = None
    """Compile the model's forward and loss as one torch.compile graph (megabert.model.compile; Inductor on a GPU,
    a trace without code generation on a CPU; 20-70 s at the start). null (the default) compiles on a GPU with
    tensor_parallel_size 1 and ZeRO 0-2, where it was measured faster (docs/BENCHMARKS.md: the trainer 5% faster
    on an H100 at base, 128 tokens), and runs eagerly elsewhere (CPU; tensor parallelism, which compiles correctly
    but has not been timed compiled; ZeRO-3, which cannot compile); the log says which and why. true compiles
    wherever it can (not with ZeRO-3), false never; MEGABERT_COMPILE=0 in the environment also keeps the model
    eager (debugging)."""
    flat_gradients: bool = True
    """ZeRO 1/2: gradients accumulate in one flat buffer per parameter group and the step runs on the flat
    partition, instead of DeepSpeed's per-parameter hooks, bucket copies and synchronising checks
    (megabert/parallel/flat_gradients.py; same checkpoints). Runs it cannot serve (fp16, CPU offload, tensor
    parallelism, ...) keep DeepSpeed's path and the log says why. false always uses DeepSpeed's."""

    def validate(self) -> None:
        _check(self.tensor_parallel_size >= 1, "parallel.tensor_parallel_size must be >= 1")
        _check(self.zero_stage in (0, 1, 2, 3), f"parallel.zero_stage ({self.zero_stage}) must be 0, 1, 2 or 3")
        _check_choice("parallel.precision", self.precision, ("bf16", "fp16", "fp32"))
        _check_choice("parallel.backend", self.backend, ("auto", "nccl", "gloo"))
        _check_choice("parallel.device", self.device, ("auto", "cuda", "cpu"))
        _check(not (self.compile is True and self.zero_stage == 3),
               "parallel.compile true cannot be combined with ZeRO-3: DeepSpeed gathers ZeRO-3's parameters in "
               "hooks that torch.compile cannot trace into one graph; leave parallel.compile null (eager under "
               "ZeRO-3) or use zero_stage 1 or 2")
        _check(not (self.zero_stage == 3 and self.tensor_parallel_size > 1),
               "parallel.zero_stage 3 cannot be combined with tensor_parallel_size > 1; "
               "use zero_stage 1 or 2 with tensor parallelism")


@dataclass
class CheckpointConfig:
    """When and where checkpoints are written, and what a run resumes from."""

    dir: Optional[str] = None
    """Directory holding step_<N>/ checkpoints and the 'latest' pointer. Unset: <output_dir>/checkpoints, so that
    --output_dir starts a run of its own instead of resuming (resume 'auto') the checkpoints of another."""
    save_interval: int = 1000
    """Save every this many steps (and always at the end); 0 saves only at the end."""
    keep_last: int = 3
    """Keep this many most recent checkpoints (0 keeps all)."""
    resume: str = "auto"
    """'auto' (latest in dir if any), 'none', or a path to a checkpoint directory."""
    init_from: Optional[str] = None
    """Initialise model weights (only) from this checkpoint or exported state dict."""
    async_save: bool = True
    """Write checkpoints in the background: training stops only while the state is copied to host memory (one
    checkpoint's worth per rank), and a save is published once every rank has written it. false writes in place
    while training waits."""
    zip_crc32: bool = False
    """Compute torch.save's per-record CRC32 in checkpoint files. torch.load never checks it (a flipped byte loads
    silently either way), so it guards nothing on resume, while it costs time: on an H200 machine a base
    checkpoint was published 2.84 s after the save with it and 2.12 s without (docs/BENCHMARKS.md).
    true keeps the files checkable with zip tools (`unzip -t`)."""

    def validate(self) -> None:
        _check(self.save_interval >= 0, "checkpoint.save_interval must be >= 0")
        _check(self.keep_last >= 0, "checkpoint.keep_last must be >= 0")
        for name in ("async_save", "zip_crc32"):
            value = getattr(self, name)
            _check(isinstance(value, bool), f"checkpoint.{name} is {value!r}; expected true or false")


@dataclass
class LoggingConfig:
    """What the run reports, and where."""

    log_interval: int = 10
    """Steps between log lines."""
    eval_interval: int = 1000
    """Steps between validation passes (0 disables)."""
    eval_iters: int = 20
    """Validation micro-batches per evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files under the output dir."""
    wandb_project: Optional[str] = None
    """Weights & Biases project (used only when wandb is installed)."""
    gpu_hour_price: float = 0.0
    """Price per GPU-hour in dollars; when > 0 the progress bar shows the run's cost."""
    max_nonfinite_steps: int = 10
    """Stop with an error after this many consecutive non-finite losses."""
    host_diagnostics: bool = False
    """Also log the process's CPU seconds, page faults and peak RSS, and the CUDA allocator's cudaMalloc and
    retry counters, per window (for finding where a host-bound step loses time)."""

    def validate(self) -> None:
        _check(self.log_interval > 0, "logging.log_interval must be > 0")
        _check(self.eval_interval >= 0, "logging.eval_interval must be >= 0")
        _check(self.max_nonfinite_steps > 0, "logging.max_nonfinite_steps must be > 0")


@dataclass
class TrainConfig:
    """A whole pretraining run. Only train/ and the entry points see this; lower modules take a section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    global_batch_size: int = 4096
    """Samples per optimizer step over all data-parallel ranks."""
    micro_batch_size: int = 128
    """Samples per forward/backward on one rank; accumulation = global / (micro x data-parallel size)."""
    seed: int = 17
    """Seed for weights, data order and masking."""
    output_dir: str = "runs/default"
    """Logs, metrics, TensorBoard files and the resolved config go here."""
    deepspeed_extra: dict = field(default_factory=dict)
    """Raw DeepSpeed keys merged into the generated JSON. Batch size, precision, optimizer and scheduler are
    defined by this config and cannot be set here."""

    def validate(self) -> None:
        """Checks every section and the fields across them. It also settles the one default that depends on another
        field: checkpoint.dir, when unset, becomes <output_dir>/checkpoints."""
        if self.checkpoint.dir is None:
            self.checkpoint.dir = str(Path(self.output_dir) / "checkpoints")
        for section in SECTIONS:
            getattr(self, section).validate()
        _check(self.global_batch_size > 0, "global_batch_size must be > 0")
        _check(self.micro_batch_size > 0, "micro_batch_size must be > 0")
        _check(self.global_batch_size % self.micro_batch_size == 0,
               f"global_batch_size ({self.global_batch_size}) is not divisible by micro_batch_size "
               f"({self.micro_batch_size})")
        tp = self.parallel.tensor_parallel_size
        _check(self.model.num_heads % tp == 0,
               f"model.num_heads ({self.model.num_heads}) is not divisible by parallel.tensor_parallel_size ({tp})")
        _check(self.model.vocab_size % tp == 0,
               f"model.vocab_size ({self.model.vocab_size}) is not divisible by parallel.tensor_parallel_size ({tp})")
        _check(self.model.intermediate_size % tp == 0,
               f"model.intermediate_size ({self.model.intermediate_size}) is not divisible by "
               f"parallel.tensor_parallel_size ({tp})")
        _check(self.model.attention_dropout == 0.0 or self.model.attention_backend in ("eager", "sdpa"),
               "model.attention_dropout > 0 needs model.attention_backend 'eager' or 'sdpa'; the fused kernels "
               "implement MosaicBERT's 0.0")

    def validate_world(self, world_size: int) -> None:
        """Checks that need the number of processes; called before any process group starts."""
        tp = self.parallel.tensor_parallel_size
        _check(world_size % tp == 0,
               f"world size ({world_size}) is not divisible by parallel.tensor_parallel_size ({tp})")
        dp = world_size // tp
        _check(self.global_batch_size % (self.micro_batch_size * dp) == 0,
               f"global_batch_size ({self.global_batch_size}) is not divisible by micro_batch_size x data-parallel "
               f"size ({self.micro_batch_size} x {dp} = {self.micro_batch_size * dp}); change one of them")

    def grad_accumulation_steps(self, data_parallel_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)


SECTIONS = ("model", "data", "optim", "schedule", "parallel", "checkpoint", "logging")


# ----------------------------------------------------------------------------------------------------------------
# Loading, saving, overrides
# ----------------------------------------------------------------------------------------------------------------


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Builds dataclass `cls` from a dict, rejecting unknown keys with a did-you-mean."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(f"{where}{key}", key, list(names)))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def read_json_file(path: str | Path, what: str, error: type = ConfigError, shown: Optional[str] = None) -> Any:
    """The content of a JSON file; `error` naming `what` and the file (as `shown`) when it is missing or not JSON."""
    path = Path(path)
    shown = str(path) if shown is None else shown
    if not path.is_file():
        raise error(f"{what} {shown} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{what} {shown} is not valid JSON: {e}") from None


def load_config(path: str | Path, overrides: Optional[list[str]] = None, validate: bool = True) -> TrainConfig:
    """Reads a JSON config, applies `--section.key value` overrides and validates."""
    data = read_json_file(path, "config file", shown=repr(str(path)))
    cfg = from_dict(TrainConfig, data)
    apply_overrides(cfg, overrides or [])
    if validate:
        cfg.validate()
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """['--model.num_layers', '4', '--data.seq_len=256'] -> [('model.num_layers', '4'), ('data.seq_len', '256')]."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override --{key} has no value")
            value = argv[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def apply_overrides(cfg: Any, overrides: list[str] | list[tuple[str, str]]) -> Any:
    """Sets dotted fields from strings, e.g. ('optim.lr', '1e-4'); values parse as JSON when they can."""
    if overrides and isinstance(overrides[0], str):
        overrides = parse_overrides(overrides)  # type: ignore[arg-type]
    for dotted, raw in overrides:
        target, parts = cfg, dotted.split(".")
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(target)]
            if part not in names:
                raise ConfigError(_unknown_key_message(dotted, part, names, prefix=".".join(parts[:depth])))
            if depth == len(parts) - 1:
                hint = typing.get_type_hints(type(target))[part]
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(f"--{dotted} names a section; set one of its fields, e.g. --{dotted}.{names[0]}")
                setattr(target, part, _coerce(_parse_value(raw), hint, dotted))
            else:
                target = getattr(target, part)
                if not dataclasses.is_dataclass(target):
                    raise ConfigError(f"--{dotted}: {'.'.join(parts[:depth + 1])} is not a section")
    return cfg


def field_value(cfg: Any, dotted: str) -> Any:
    """The value of a dotted field ('optim.lr'), as overrides name it; None where no such field exists."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def describe_fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, docstring) for every field, for --help."""
    docs = _attribute_docstrings(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += describe_fields(hint, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            out.append((prefix + f.name, json.dumps(default), docs.get(f.name, "")))
    return out


def replace(cfg: Any, **changes: Any) -> Any:
    """A deep copy of `cfg` with top-level fields changed."""
    return dataclasses.replace(copy.deepcopy(cfg), **changes)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} is {value!r}; expected one of {', '.join(map(repr, choices))}{hint}")


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


RENAMED = {"data.stage_ahead": "data.prefetch_depth"}
"""Fields that have a new name: a config using the old one is told the new one."""
REMOVED = {"parallel.engine_switches": "DeepSpeed settings go in deepspeed_extra (docs/ENGINE.md says which ones "
                                       "were measured); the throughput timer is always off"}
"""Fields that are gone: a config using one is told what to do instead."""


def _unknown_key_message(dotted: str, key: str, names: list[str], prefix: str = "") -> str:
    full = f"{prefix}.{key}" if prefix else dotted
    if full in RENAMED:
        return f"config key '{full}' is now called '{RENAMED[full]}'; rename it"
    if full in REMOVED:
        return f"config key '{full}' was removed: {REMOVED[full]}; remove it"
    close = difflib.get_close_matches(key, names, n=1)
    where = f" in section '{prefix}'" if prefix else ""
    hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
    return f"unknown config key '{dotted}'{where}{hint} (known: {', '.join(names)})"


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Checks/converts a JSON value to the field's declared type, naming the field on failure."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is list or origin is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{name} must be of type {type_name}, got {value!r}")


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Reads the string literal that follows each field in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
