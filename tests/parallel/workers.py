"""Functions run on spawned ranks by the tensor-parallel tests (module level, so they can be pickled)."""

from __future__ import annotations

import copy

import torch

from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.parallel.cross_entropy import vocab_parallel_argmax
from megabert.parallel.groups import ParallelGroups
from megabert.parallel.parallelize import parallelize_model
from tests.parallel.tiny import mlm_batch, plain_bert_config, tiny_config


def _variants():
    return {
        "mosaic_mlm": (lambda: MosaicBertForMaskedLM(tiny_config())),
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
        out_full, out_tp = full(**batch), sharded(**batch)
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
        if hasattr(sharded, "loss_fn"):
            result["argmax_tp"] = vocab_parallel_argmax(out_tp.logits, groups.tp_group)
        results[name] = result
    groups.destroy()
    return results
