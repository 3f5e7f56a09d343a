"""The whole model with its fused kernels (Triton attention, GeGLU, add+LayerNorm) against the same model on eager
PyTorch ops (SDPA attention, MEGABERT_FUSED_OPS=0), in bf16 on the GPU; and the CPU path staying eager."""

from __future__ import annotations

import copy

import pytest
import torch

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForMaskedLM
from tests.ops.accuracy import rel_error


def _batch(device: str, vocab: int = 512):
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 7, 129, 64]
    seq = max(lengths)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, vocab, (len(lengths), seq), generator=gen) * mask
    labels = torch.where((torch.rand(ids.shape, generator=gen) < 0.3) & mask.bool(), ids, -100)
    return ids.to(device), mask.to(device), labels.to(device)


def _loss_and_grads(model, batch):
    with torch.autocast(model.bert.embeddings.word_embeddings.weight.device.type, dtype=torch.bfloat16):
        loss = model(*batch[:2], labels=batch[2]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.gpu
def test_gpu_fused_model_matches_eager_ops(monkeypatch):
    cfg = ModelConfig(vocab_size=512, hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512,
                      hidden_dropout=0.0, attention_backend="triton")
    torch.manual_seed(0)
    fused = MosaicBertForMaskedLM(cfg).cuda()
    eager = copy.deepcopy(fused)
    for module in eager.modules():
        if hasattr(module, "backend"):
            module.backend = "sdpa"
    batch = _batch("cuda")
    loss_f, grads_f = _loss_and_grads(fused, batch)
    monkeypatch.setenv("MEGABERT_FUSED_OPS", "0")
    loss_e, grads_e = _loss_and_grads(eager, batch)
    assert abs(loss_f.item() - loss_e.item()) < 2e-2 * abs(loss_e.item())
    for name, grad in grads_e.items():
        assert rel_error(grads_f[name], grad) < 5e-2, name  # two bf16 computations of the same step


def test_cpu_model_uses_eager_ops_and_runs_backward():
    cfg = ModelConfig(vocab_size=512, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64,
                      hidden_dropout=0.0)
    model = MosaicBertForMaskedLM(cfg)
    loss, grads = _loss_and_grads(model, _batch("cpu"))
    assert torch.isfinite(loss) and grads


def test_cpu_model_compiles_and_matches_eager():
    """torch.compile of the whole model (graph breaks at the data-dependent unpadding) gives the eager loss."""
    cfg = ModelConfig(vocab_size=512, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64,
                      hidden_dropout=0.0)
    model = MosaicBertForMaskedLM(cfg)
    batch = _batch("cpu")
    eager_loss = model(*batch[:2], labels=batch[2]).loss
    compiled_loss = torch.compile(model, backend="aot_eager")(*batch[:2], labels=batch[2]).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
