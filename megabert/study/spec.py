"""What a study is: variants x budgets over one corpus, one evaluation set, optionally one downstream task.

A study JSON file (configs/study/*.json):

    {"name": "base-h200", "description": "...", "output_dir": "runs/study/base-h200",
     "base_config": "configs/base.json",                     # the run config every run starts from
     "overrides": {"data.data_path": ["data/c4/c4_text_document"], "global_batch_size": 512},  # every run
     "budgets_minutes": [5, 10, 20],
     "variants": [{"name": "MosaicBERT", "role": "mosaicbert"},
                  {"name": "BERT", "role": "baseline", "overrides": {"model.position_embedding": "learned", ...}}],
     "sweeps": [{"name": "BERT", "role": "baseline", "overrides": {...}, "grid": {"optim.lr": [1e-4, 2e-4]}}],
     "ablation": {"budget_minutes": 10, "switches": ["alibi", "geglu", ...]},   # default: every switch
     "evaluation": {"samples": 4096, "batch_size": 256},
     "downstream": {"name": "debian_sections", "train_file": ..., "dev_file": ..., "labels_file": ...,
                    "text_columns": ["text"], "label_column": "label", "args": ["--epochs", "3"]}}

Overrides are `section.key: value` pairs, applied as pretrain_bert.py's `--section.key value` (strings as they
are, anything else as JSON). Relative paths are relative to the directory the study runs from, as for
pretrain_bert.py. A run is one variant at one budget; the MosaicBERT and baseline variants (and sweep points) run
at every budget, the ablation's variants (the MosaicBERT variant with one switch turned off each) at the
ablation's budget. Every run is checked against megabert's config rules before anything starts.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from megabert.config import ConfigError, TrainConfig, field_value, load_config, read_json_file
from megabert.train.preflight import data_prefixes

ROLES = ("mosaicbert", "baseline", "variant")
"""mosaicbert: the reference of the ablation; baseline: the model MosaicBERT is compared with; variant: other."""

SHARED_DATA_FIELDS = ("data_path", "split", "seq_len", "sample_mode", "tokenizer_type", "vocab_file",
                      "tokenizer_model")
"""What every run of a study must share, so one evaluation set (and its masked tokens) is fair to all."""


class StudyError(ValueError):
    """The study file is unusable; the message names the entry and the fix."""


@dataclass(frozen=True)
class Switch:
    """One MosaicBERT modification, as the config field that turns it off."""

    name: str
    key: str
    on: Any
    off: Any
    description: str


SWITCHES = (
    Switch("alibi", "model.position_embedding", "alibi", "learned", "learned position embeddings instead of ALiBi"),
    Switch("geglu", "model.mlp_type", "geglu", "gelu", "GELU MLP instead of GeGLU"),
    Switch("unpad", "model.unpad", True, False, "padded tokens through every layer instead of unpadded"),
    Switch("low_precision_layernorm", "model.low_precision_layernorm", True, False,
           "LayerNorm upcast to fp32 instead of run in bf16"),
    Switch("sparse_mlm_head", "model.sparse_mlm_head", True, False, "MLM head on every token instead of the masked"),
    Switch("mask_30", "data.mask_prob", 0.3, 0.15, "15% masking instead of 30%"),
)
"""The paper's ablation, one entry per modification."""
SWITCH_BY_NAME = {s.name: s for s in SWITCHES}


@dataclass
class Variant:
    name: str
    role: str = "variant"
    overrides: dict = field(default_factory=dict)
    switch: Optional[str] = None
    """The switch turned off (ablation variants only)."""

    @property
    def id(self) -> str:
        return slug(self.name)


@dataclass
class Downstream:
    """A user task fine-tuned from each pretrained model through tools/run_glue.py."""

    name: str
    train_file: str
    dev_file: str
    text_columns: list = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    labels_file: Optional[str] = None
    """One label per line (the label set in index order); default: inferred from the training file."""
    args: list = field(default_factory=list)
    """More run_glue.py arguments (recipe overrides such as --epochs 3 --lr 5e-5 --seq-len 64 --seeds 19)."""


@dataclass
class Evaluation:
    samples: int = 2048
    """Validation samples in the evaluation set (fewer if the validation split has fewer)."""
    batch_size: int = 128
    mask_prob: float = 0.15
    """Masking rate of the evaluation set: BERT's 15%, whatever rate a variant trains at."""
    seed: Optional[int] = None
    """Seed of the masks (default: the runs' seed)."""


@dataclass
class Run:
    """One variant at one budget."""

    variant: Variant
    budget_minutes: float
    directory: Path
    overrides: dict
    """Every override of this run's pretraining, study-wide ones first."""

    @property
    def id(self) -> str:
        return f"{self.variant.id}/{budget_label(self.budget_minutes)}"


@dataclass
class Study:
    name: str
    output_dir: Path
    base_config: str
    budgets_minutes: list
    variants: list
    overrides: dict = field(default_factory=dict)
    description: str = ""
    ablation_budget: Optional[float] = None
    evaluation: Evaluation = field(default_factory=Evaluation)
    downstream: Optional[Downstream] = None
    keep_models: bool = True
    """False: once a run's results are recorded, its exported model and checkpoints are deleted (runner.py)."""
    source: str = ""

    @property
    def reference(self) -> Optional[Variant]:
        return next((v for v in self.variants if v.role == "mosaicbert"), None)

    def runs(self) -> list[Run]:
        """Every run in the order workers take them: budgets smallest first, then variants in study order."""
        out = []
        budgets = sorted(set(self.budgets_minutes) | ({self.ablation_budget} if self.ablation_budget else set()))
        for budget in budgets:
            for variant in self.variants:
                if variant.role == "ablation":
                    wanted = budget == self.ablation_budget
                elif variant.role == "mosaicbert":
                    wanted = True  # every budget, the ablation's included (it is the ablation's reference)
                else:
                    wanted = budget in self.budgets_minutes
                if not wanted:
                    continue
                directory = self.output_dir / "runs" / variant.id / budget_label(budget)
                overrides = {**self.overrides, **variant.overrides, "schedule.budget_minutes": budget,
                             "output_dir": str(directory), "checkpoint.dir": str(directory / "checkpoints"),
                             "checkpoint.resume": "auto"}
                out.append(Run(variant, budget, directory, overrides))
        return out

    def run_config(self, run: Run) -> TrainConfig:
        """The run's resolved config (validated): what pretrain_bert.py will run."""
        try:
            return load_config(self.base_config, override_args(run.overrides))
        except ConfigError as e:
            raise StudyError(f"{self.source}: run {run.id}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_study(path: str | Path) -> Study:
    """Reads a study file, expands its sweeps and ablation into variants and checks every run's config."""
    path = Path(path)
    data = read_json_file(path, "study file", StudyError)
    where = str(path)
    known = {"name", "description", "output_dir", "base_config", "overrides", "budgets_minutes", "variants",
             "sweeps", "ablation", "evaluation", "downstream", "keep_models"}
    _no_unknown(data, known, where)
    for key in ("name", "output_dir", "base_config", "budgets_minutes", "variants"):
        if key not in data:
            raise StudyError(f"{where}: missing {key!r}")
    budgets = [_positive(b, f"{where}: budgets_minutes") for b in data["budgets_minutes"]]
    if not budgets or len(set(budgets)) != len(budgets):
        raise StudyError(f"{where}: budgets_minutes needs one or more distinct budgets, got {data['budgets_minutes']}")
    variants = [_variant(v, f"{where}: variants[{i}]") for i, v in enumerate(data["variants"])]
    for i, sweep in enumerate(data.get("sweeps", [])):
        variants += _sweep(sweep, f"{where}: sweeps[{i}]")
    study = Study(name=str(data["name"]), output_dir=Path(data["output_dir"]), base_config=str(data["base_config"]),
                  budgets_minutes=sorted(budgets), variants=variants, overrides=_overrides(data.get("overrides", {}),
                                                                                          f"{where}: overrides"),
                  description=str(data.get("description", "")), source=where)
    references = [v for v in variants if v.role == "mosaicbert"]
    if len(references) > 1:
        raise StudyError(f"{where}: {len(references)} variants have role 'mosaicbert'; the ablation needs exactly one")
    if "ablation" in data:
        study.ablation_budget, study.variants = _ablation(data["ablation"], study, f"{where}: ablation")
    if "evaluation" in data:
        study.evaluation = _evaluation(data["evaluation"], f"{where}: evaluation")
    if data.get("downstream"):
        study.downstream = _downstream(data["downstream"], f"{where}: downstream")
    if not isinstance(data.get("keep_models", True), bool):
        raise StudyError(f"{where}: keep_models must be true or false, got {data['keep_models']!r}")
    study.keep_models = data.get("keep_models", True)
    ids = [v.id for v in study.variants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise StudyError(f"{where}: variant names must differ (also once made into directory names): {duplicates}")
    check_runs(study)
    return study


def check_runs(study: Study) -> None:
    """Every run's config is valid and they all share the data (one evaluation set is fair to all)."""
    shared: Optional[tuple] = None
    first = None
    for run in study.runs():
        cfg = study.run_config(run)
        values = tuple(str(getattr(cfg.data, f)) for f in SHARED_DATA_FIELDS) + (cfg.seed,)
        if shared is None:
            shared, first = values, run
        elif values != shared:
            names = [*SHARED_DATA_FIELDS, "seed"]
            differ = [f"{n}: {a!r} vs {b!r}" for n, a, b in zip(names, shared, values) if a != b]
            raise StudyError(f"{study.source}: runs {first.id} and {run.id} differ in {'; '.join(differ)}; every run "
                             f"of a study trains on the same data (set these in 'overrides', not in a variant)")
    if study.downstream:
        for name in ("train_file", "dev_file", "labels_file"):
            value = getattr(study.downstream, name)
            if value and not Path(value).is_file():
                hint = " (build it with tools/build_package_task.py)" if "debian" in value else ""
                raise StudyError(f"{study.source}: downstream.{name} {value} does not exist{hint}")
    for prefix in data_prefixes(study.run_config(study.runs()[0])):
        missing = [ext for ext in (".bin", ".idx") if not Path(prefix + ext).is_file()]
        if missing:
            raise StudyError(f"{study.source}: corpus {prefix}{' and '.join(missing)} not found; preprocess it first "
                             f"(tools/preprocess_data.py --output-prefix ..., see docs/DATA.md)")


def _variant(data: Any, where: str) -> Variant:
    if not isinstance(data, dict) or "name" not in data:
        raise StudyError(f"{where}: a variant is an object with a 'name' (and 'role', 'overrides')")
    _no_unknown(data, {"name", "role", "overrides"}, where)
    role = data.get("role", "variant")
    if role not in ROLES:
        raise StudyError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    return Variant(str(data["name"]), role, _overrides(data.get("overrides", {}), f"{where}.overrides"))


def _sweep(data: Any, where: str) -> list[Variant]:
    """A grid: one variant per combination of the grid's values, named after them."""
    if not isinstance(data, dict) or "name" not in data or not isinstance(data.get("grid"), dict) \
            or not data["grid"]:
        raise StudyError(f"{where}: a sweep is an object with a 'name' and a non-empty 'grid' "
                         f"{{'section.key': [values]}}")
    _no_unknown(data, {"name", "role", "overrides", "grid"}, where)
    base = _variant({k: data[k] for k in ("name", "role", "overrides") if k in data}, where)
    keys = list(data["grid"])
    for key in keys:
        if not isinstance(data["grid"][key], list) or not data["grid"][key]:
            raise StudyError(f"{where}: grid {key!r} needs a non-empty list of values")
    out = []
    for values in itertools.product(*(data["grid"][k] for k in keys)):
        point = dict(zip(keys, values))
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
        out.append(Variant(f"{base.name} {label}", base.role, {**base.overrides, **point}))
    return out


def _ablation(data: Any, study: Study, where: str) -> tuple[float, list[Variant]]:
    """The MosaicBERT variant with each switch off in turn, at one budget."""
    if not isinstance(data, dict):
        raise StudyError(f"{where}: expected an object {{'budget_minutes': ..., 'switches': [...]}}")
    _no_unknown(data, {"budget_minutes", "switches"}, where)
    reference = study.reference
    if reference is None:
        raise StudyError(f"{where}: the ablation switches modifications off the variant with role 'mosaicbert'; "
                         f"give one variant that role")
    budget = _positive(data.get("budget_minutes", study.budgets_minutes[0]), f"{where}.budget_minutes")
    names = data.get("switches", [s.name for s in SWITCHES])
    unknown = [n for n in names if n not in SWITCH_BY_NAME]
    if unknown or not names:
        raise StudyError(f"{where}: unknown switch(es) {unknown or names}; choose from "
                         f"{', '.join(s.name for s in SWITCHES)}")
    try:
        reference_cfg = load_config(study.base_config, override_args({**study.overrides, **reference.overrides}))
    except ConfigError as e:
        raise StudyError(f"{where}: the MosaicBERT variant {reference.name!r}: {e}") from None
    variants = list(study.variants)
    for name in names:
        switch = SWITCH_BY_NAME[name]
        value = field_value(reference_cfg, switch.key)
        if value != switch.on:
            raise StudyError(f"{where}: switch {name} turns {switch.key} from {switch.on!r} to {switch.off!r}, but "
                             f"the MosaicBERT variant {reference.name!r} has {switch.key} = {value!r}; set it to "
                             f"{switch.on!r} or drop the switch")
        variants.append(Variant(f"{reference.name} no {name}", "ablation",
                                {**reference.overrides, switch.key: switch.off}, switch=name))
    return budget, variants


def _evaluation(data: Any, where: str) -> Evaluation:
    if not isinstance(data, dict):
        raise StudyError(f"{where}: expected an object")
    _no_unknown(data, {"samples", "batch_size", "mask_prob", "seed"}, where)
    ev = Evaluation(**data)
    if not (isinstance(ev.samples, int) and ev.samples > 0 and isinstance(ev.batch_size, int) and ev.batch_size > 0):
        raise StudyError(f"{where}: samples and batch_size must be positive integers")
    if not 0 < ev.mask_prob < 1:
        raise StudyError(f"{where}: mask_prob must be in (0, 1)")
    return ev


def _downstream(data: Any, where: str) -> Downstream:
    if not isinstance(data, dict):
        raise StudyError(f"{where}: expected an object")
    _no_unknown(data, {"name", "train_file", "dev_file", "text_columns", "label_column", "labels_file", "args"}, where)
    for key in ("name", "train_file", "dev_file"):
        if key not in data:
            raise StudyError(f"{where}: missing {key!r}")
    task = Downstream(**data)
    if not isinstance(task.args, list) or not all(isinstance(a, str) for a in task.args):
        raise StudyError(f"{where}: args is a list of strings (run_glue.py arguments)")
    return task


def _overrides(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise StudyError(f"{where}: overrides are an object {{'section.key': value}}")
    for key in data:
        if key in ("output_dir", "checkpoint.dir", "checkpoint.resume", "schedule.budget_minutes"):
            raise StudyError(f"{where}: {key!r} is set by the study for each run; remove it")
    return dict(data)


def _no_unknown(data: dict, known: set, where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise StudyError(f"{where}: {value!r} is not a positive number of minutes")
    return float(value)


def override_args(overrides: dict) -> list[str]:
    """{'optim.lr': 1e-4, 'model.unpad': False} -> ['--optim.lr', '0.0001', '--model.unpad', 'false']."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def budget_label(minutes: float) -> str:
    return f"{minutes:g}min"


def slug(name: str) -> str:
    """A variant name as a directory name: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9.=]+", "-", name.lower()).strip("-") or "variant"
