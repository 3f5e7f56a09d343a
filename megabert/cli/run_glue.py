"""Fine-tune a megabert model on GLUE and/or your own task; write a results table (markdown + JSON).

GLUE (MosaicBERT's recipe from configs/glue/*.json, median over seeds, GLUE average):
    python tools/run_glue.py --model runs/base/model --glue-dir /data/glue --output runs/base/glue
    python tools/run_glue.py --model DIR --glue-dir /data/glue --tasks sst2,rte --seeds 1,2,3 --output OUT

Your own task (TSV, CSV or JSON lines; one text column or two; classification or regression):
    python tools/run_glue.py --model DIR --output OUT --task-name reviews --train-file train.csv \\
        --dev-file dev.csv --text-columns review --label-column stars --labels 1,2,3,4,5

Everything is read and checked before training starts. With several GPUs, one job runs per GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


from megabert.config import ConfigError
from megabert.data.tokenizer import TokenizerError as DataTokenizerError
from megabert.tasks.glue import GLUE_TASKS, canonical_name, glue_task
from megabert.tasks.recipe import Recipe, glue_recipe, load_recipe
from megabert.tasks.results import markdown_table, summarize, write_results
from megabert.tasks.runner import run_tasks
from megabert.tasks.task import TaskError, user_task
from megabert.model.pretrained import TokenizerError, attach_tokenizer
from megabert.tasks.tokenizer import resolve_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: its configs/glue holds the GLUE recipes
OVERRIDABLE = {"lr": "optim.lr", "epochs": "epochs", "batch_size": "batch_size", "seq_len": "seq_len"}
"""Command-line flag -> recipe field it overrides."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="megabert model dir (config.json, model.safetensors, tokenizer)")
    p.add_argument("--output", required=True, help="results.json, results.md and one directory per task/seed")
    g = p.add_argument_group("GLUE")
    g.add_argument("--glue-dir", help="GLUE data in its distributed layout (CoLA/, SST-2/, MNLI/, ...)")
    g.add_argument("--tasks", help=f"comma-separated GLUE tasks (default with --glue-dir: {','.join(GLUE_TASKS)})")
    g.add_argument("--recipes", default=str(REPO_ROOT / "configs" / "glue"), help="directory of <task>.json recipes")
    g.add_argument("--mnli-checkpoint", help="fine-tuned MNLI model dir for RTE/MRPC/STS-B when MNLI is not run")
    u = p.add_argument_group("your own task")
    u.add_argument("--task-name", default="custom", help="name in paths and tables")
    u.add_argument("--train-file", help="training rows (.tsv, .csv, .jsonl)")
    u.add_argument("--dev-file", action="append", default=[], help="evaluation rows; repeat for several, "
                   "optionally named: --dev-file in_domain=dev1.tsv --dev-file other=dev2.tsv")
    u.add_argument("--text-columns", help="one column, or two comma-separated for sentence pairs")
    u.add_argument("--label-column", default="label")
    u.add_argument("--labels", help="comma-separated label set in index order (default: inferred from training)")
    u.add_argument("--regression", action="store_true", help="predict a number (Pearson/Spearman)")
    u.add_argument("--metrics", help="comma-separated metrics (accuracy,f1,matthews,pearson,spearman)")
    u.add_argument("--format", choices=("tsv", "csv", "jsonl"), help="default: from the file extension")
    u.add_argument("--no-header", action="store_true", help="TSV/CSV without a header; columns are 0-based indices")
    u.add_argument("--recipe", help="recipe JSON for the user task (default: the Recipe defaults)")
    o = p.add_argument_group("overrides and devices")
    o.add_argument("--seeds", help="comma-separated seeds for every task (default: each recipe's)")
    o.add_argument("--lr", type=float)
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--seq-len", type=int, help="may exceed the pretraining length (ALiBi extrapolates)")
    o.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    o.add_argument("--gpus", help="comma-separated GPU ids to spread jobs over (default: all visible)")
    t = p.add_argument_group("tokenizer (when the model dir records none)")
    t.add_argument("--vocab-file", help="WordPiece vocab.txt to attach to the model dir")
    t.add_argument("--cased", action="store_true", help="the vocab is cased (BertWordPieceCase)")
    t.add_argument("--tokenizer-json", help="Hugging Face tokenizer.json to attach to the model dir")
    t.add_argument("--sentencepiece-model", help="SentencePiece .model to attach to the model dir")
    return p.parse_args(argv)


def _columns(text: str, indices: bool) -> list:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if indices:
        try:
            return [int(c) for c in names]
        except ValueError:
            raise TaskError(f"--no-header columns must be 0-based indices, got {text!r}") from None
    return names


def build_user_task(args: argparse.Namespace):
    if not args.text_columns:
        raise TaskError("--train-file needs --text-columns (one column, or two comma-separated)")
    if not args.dev_file:
        raise TaskError("--train-file needs at least one --dev-file")
    evals = {}
    for item in args.dev_file:
        name, path = ("dev", item)
        if "=" in item and not Path(item).exists():  # NAME=PATH (a path that itself contains '=' stays whole)
            name, path = item.split("=", 1)
        if name in evals:
            raise TaskError(f"two --dev-file entries are named {name!r}; name them: --dev-file NAME=PATH")
        evals[name or "dev"] = path
    label_column = _columns(args.label_column, args.no_header)[0]
    return user_task(args.task_name, args.train_file, evals, _columns(args.text_columns, args.no_header),
                     label_column, labels=args.labels.split(",") if args.labels else None,
                     regression=args.regression, metrics=args.metrics.split(",") if args.metrics else None,
                     file_format=args.format, has_header=not args.no_header)


def _apply_overrides(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    for flag, field in OVERRIDABLE.items():
        value = getattr(args, flag)
        if value is not None:
            *sections, name = field.split(".")
            target = recipe
            for section in sections:
                target = getattr(target, section)
            setattr(target, name, value)
    if args.seeds:
        try:
            recipe.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise TaskError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    recipe.validate()
    return recipe


def _ensure_tokenizer(args: argparse.Namespace) -> None:
    if args.vocab_file:
        attach_tokenizer(args.model, "BertWordPieceCase" if args.cased else "BertWordPieceLowerCase",
                         vocab_file=args.vocab_file)
    elif args.tokenizer_json:
        attach_tokenizer(args.model, "HuggingFaceTokenizer", tokenizer_model=args.tokenizer_json)
    elif args.sentencepiece_model:
        attach_tokenizer(args.model, "SentencePieceTokenizer", tokenizer_model=args.sentencepiece_model)
    elif resolve_tokenizer(args.model) is None:
        raise TokenizerError(f"{args.model} records no tokenizer; pass --vocab-file, --tokenizer-json or "
                             f"--sentencepiece-model")


def _slots(args: argparse.Namespace) -> list[str] | None:
    if args.device == "cpu":
        return None
    if args.gpus:
        return [g.strip() for g in args.gpus.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if not Path(args.model, "config.json").is_file():
            raise TaskError(f"--model {args.model} is not a megabert model dir (no config.json)")
        specs, recipes = [], {}
        if args.glue_dir or args.tasks:
            if not args.glue_dir:
                raise TaskError("--tasks needs --glue-dir")
            names = [canonical_name(t) for t in (args.tasks.split(",") if args.tasks else GLUE_TASKS)]
            for name in dict.fromkeys(names):
                specs.append(glue_task(name, args.glue_dir))
                recipes[name] = _apply_overrides(glue_recipe(name, args.recipes), args)
        if args.train_file:
            spec = build_user_task(args)
            if spec.name in recipes:
                raise TaskError(f"--task-name {spec.name} clashes with a GLUE task; pick another name")
            specs.append(spec)
            recipes[spec.name] = _apply_overrides(load_recipe(args.recipe) if args.recipe else Recipe(task=spec.name),
                                                  args)
        if not specs:
            raise TaskError("nothing to run: pass --glue-dir (GLUE) and/or --train-file (your own task)")
        _ensure_tokenizer(args)
        checkpoints = {"mnli": args.mnli_checkpoint} if args.mnli_checkpoint else None
        results = run_tasks(specs, recipes, args.model, args.output, device=args.device, slots=_slots(args),
                            init_checkpoints=checkpoints)
    except (TaskError, ConfigError, TokenizerError, DataTokenizerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(results)
    json_path, md_path = write_results(summary, args.output)
    print(markdown_table(summary))
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
