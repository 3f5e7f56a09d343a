"""Functions run on spawned ranks by the tensor-parallel tests (module level, so they can be pickled)."""

from __future__ import annotations

import copy

import torch

from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.parallel.cross_entropy import vocab_parallel_argmax
from megabert.parallel.groups import ParallelGroups
from megabert.parallel.parallelize import parallelize_model
from megabert.parallel.tp_checkpoint import gather_full_state_dict
from tests.parallel.tiny import mlm_batch, plain_bert_config, tiny_config


def _variants():
    return {
        "mosaic_mlm": (lambda: MosaicBertForMaskedLM(tiny_config())),
        "mosaic_mlm_dropout": (lambda: MosaicBertForMaskedLM(tiny_config(hidden_dropout=0.1))),
        "mosaic_mlm_eager_attention": (lambda: MosaicBertForMaskedLM(tiny_config(attention_backend="eager"))),
        "plain_bert_mlm": (lambda: MosaicBertForMaskedLM(plain_bert_config())),
        "mosaic_classification": (lambda: MosaicBertForSequenceClassification(tiny_config(), num_labels=3)),
    }


def forward_backward_worker(rank: int, world_size: int) -> dict:
    """Full model and its TP shard on the same batch: losses, outputs, grads and state of both."""
    groups = ParallelGroups(world_size)
    results = {}
    for name, build in _variants().items():
        torch.manual_seed(0)
        full = build()
        sharded = parallelize_model(copy.deepcopy(full), groups)
        batch = mlm_batch(full.cfg, seed=1)
        if "classification" in name:
            batch["labels"] = torch.tensor([0, 2, 1])
        torch.manual_seed(5)
        out_full = full(**batch)
        torch.manual_seed(5)  # dropout sits in replicated regions: the same draws as the full model, on every rank
        out_tp = sharded(**batch)
        out_full.loss.backward()
        out_tp.loss.backward()
        result = {
            "loss_full": out_full.loss.detach(), "loss_tp": out_tp.loss.detach(),
            "logits_full": out_full.logits.detach(), "logits_tp": out_tp.logits.detach(),
            "grads_full": {k: p.grad for k, p in full.named_parameters()},
            "grads_tp": {k: p.grad for k, p in sharded.named_parameters()},
            "state_full": full.state_dict(), "state_tp": sharded.state_dict(),
            "tensor_model_parallel": {k: p.tensor_model_parallel for k, p in sharded.named_parameters()},
        }
        result["gathered_state"] = gather_full_state_dict(sharded, groups.tp_group, full.cfg.mlp_type)
        if hasattr(sharded, "loss_fn"):
            result["argmax_tp"] = vocab_parallel_argmax(out_tp.logits, groups.tp_group)
        results[name] = result
    torch.manual_seed(rank)  # a trainer bug: seeding by global rank
    try:
        parallelize_model(MosaicBertForMaskedLM(tiny_config(hidden_dropout=0.1)), groups)
        results["unsynced_rng_error"] = None
    except RuntimeError as e:
        results["unsynced_rng_error"] = str(e)
    groups.destroy()
    return results


# ----------------------------------------------------------------------------------------------------------------
# TP x DP training with DeepSpeed ZeRO, against a single process
# ----------------------------------------------------------------------------------------------------------------

ZERO_RUN = dict(lr=2e-3, grad_clip=0.5, micro_batch_seed=1000)


def _micro_batch(cfg, step: int, dp_rank: int) -> dict:
    return mlm_batch(cfg, seed=ZERO_RUN["micro_batch_seed"] * step + dp_rank)


def single_process_reference(dp_size: int, steps: int) -> dict:
    """The same global batch (dp_size micro-batches, averaged) on one process: plain torch AdamW + clipping."""
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=ZERO_RUN["lr"], weight_decay=0.0)
    losses, norms = [], []
    for step in range(steps):
        micro = [model(**_micro_batch(model.cfg, step, d)).loss for d in range(dp_size)]
        loss = torch.stack(micro).mean()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), ZERO_RUN["grad_clip"])))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return {"losses": losses, "grad_norms": norms, "state": model.state_dict()}


def zero_tp_worker(rank: int, world_size: int, tp_size: int, runs: list[tuple[int, int, str]],
                   ckpt_dir: str) -> list:
    """For each (zero_stage, steps, precision) in `runs`: TP x DP training of the tiny MLM through
    deepspeed.initialize(mpu=groups), then a DeepSpeed checkpoint under ckpt_dir/run<i>."""
    groups = ParallelGroups(tp_size, tiny_config())
    results = [_train_with_deepspeed(groups, *run, f"{ckpt_dir}/run{i}") for i, run in enumerate(runs)]
    groups.destroy()
    return results


def _train_with_deepspeed(groups: ParallelGroups, zero_stage: int, steps: int, precision: str,
                          ckpt_dir: str) -> dict:
    import deepspeed

    torch.manual_seed(0)  # same seed everywhere: identical full weights, identical (zero) dropout streams
    model = parallelize_model(MosaicBertForMaskedLM(tiny_config()), groups)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ZERO_RUN["lr"], weight_decay=0.0)
    ds_config = {
        "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 3 * groups.dp_size,
        "gradient_clipping": ZERO_RUN["grad_clip"],
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "bf16": {"enabled": precision == "bf16"},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=groups)
    losses, norms = [], []
    for step in range(steps):
        loss = engine(**_micro_batch(model.cfg, step, groups.dp_rank)).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        norms.append(float(engine.get_global_grad_norm()))
    engine.save_checkpoint(ckpt_dir, tag="final")
    return {"zero_stage": zero_stage, "tp_rank": groups.tp_rank, "dp_rank": groups.dp_rank, "losses": losses,
            "grad_norms": norms, "state": {k: v.detach().clone() for k, v in engine.module.state_dict().items()}}
