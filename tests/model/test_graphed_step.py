"""GraphedStep's bookkeeping (warm-up, one capture per bucket, the input buffer refreshed before every replay,
batches outside the buckets run as they are) on the CPU with a capture that re-runs the step; the real CUDA graph
on the GPU."""

import copy

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.buckets import TokenBuckets, pack_bucketed
from megabert.model.graphed_step import GraphedStep
from megabert.model.inputs import pack_inputs
from tests.model.helpers import ragged_batch, tiny_config

BUCKETS = TokenBuckets(4, 16, token_step=32, masked_step=16)
LENGTHS = [[12, 7, 16, 3], [5, 5, 9, 2], [16, 16, 16, 16], [1, 11, 4, 8], [12, 8, 15, 4], [6, 4, 9, 3]]


def _batch(lengths, seed, batch_size=4):
    ids, mask, labels = ragged_batch(lengths + [lengths[0]] * (batch_size - len(lengths)), seq_len=16, seed=seed)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _train_step(model, optimizer, dtype=None):
    device_type = next(model.parameters()).device.type

    def step(inputs):
        with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(**inputs, mlm_output="loss").loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return loss.detach()

    return step


class RerunCapture:
    """A stand-in for CUDA-graph capture: 'replay' runs the captured function again, reading the same buffers."""

    def __init__(self):
        self.captures = 0

    def __call__(self, fn):
        self.captures += 1
        return fn


def test_graphed_steps_train_exactly_as_plain_steps_with_one_capture_per_bucket():
    torch.manual_seed(0)
    cfg = tiny_config()
    plain = MosaicBertForMaskedLM(cfg)
    graphed = copy.deepcopy(plain)
    plain_step = _train_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    capture = RerunCapture()
    step = GraphedStep(_train_step(graphed, torch.optim.SGD(graphed.parameters(), lr=0.1)), "cpu", capture=capture)
    shapes = []
    for seed, lengths in enumerate(LENGTHS * 2):
        batch = _batch(lengths, seed)
        packed = pack_bucketed(batch, cfg, BUCKETS)
        shapes.append(packed.shape_key)
        expected = plain_step(pack_inputs(batch, cfg).to("cpu"))
        torch.testing.assert_close(step(packed), expected, rtol=1e-6, atol=1e-6, msg=f"step {seed}")
    for (name, a), b in zip(plain.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    seen_twice = {key for key in shapes if shapes.count(key) >= 2}
    assert capture.captures == step.graphs == len(seen_twice) >= 2  # warm-up run first, then one capture each
    assert step.replays == len(shapes) - len(set(shapes))


def test_batches_outside_the_buckets_run_as_they_are_and_max_graphs_is_kept():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MosaicBertForMaskedLM(cfg).eval()
    losses = []
    capture = RerunCapture()
    step = GraphedStep(lambda inputs: model(**inputs, mlm_output="loss").loss.detach(), "cpu", capture=capture,
                       warmup=0, max_graphs=1)
    for seed, lengths in enumerate(LENGTHS):
        wide = _batch(lengths, seed, batch_size=6)  # not the buckets' [4, 16]: outside them
        assert pack_bucketed(wide, cfg, BUCKETS) is None
        losses.append(step(pack_inputs(wide, cfg)))
        torch.testing.assert_close(losses[-1], model(**pack_inputs(wide, cfg).to("cpu"), mlm_output="loss").loss)
        step(pack_bucketed(_batch(lengths, seed), cfg, BUCKETS))
    assert capture.captures == step.graphs == 1  # the other buckets ran uncaptured
    assert len({loss.item() for loss in losses}) == len(LENGTHS)


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(lambda inputs: None, "cpu")


@pytest.mark.gpu
def test_gpu_graph_replays_train_like_plain_steps_and_redraw_dropout():
    from megabert.model.compile import compile_model

    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=128, num_heads=2, intermediate_size=256, attention_backend="auto",
                      hidden_dropout=0.0)
    plain = MosaicBertForMaskedLM(cfg).cuda()
    graphed = compile_model(copy.deepcopy(plain))

    def adamw(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, capturable=True)

    plain_step = _train_step(plain, adamw(plain), torch.bfloat16)
    step = GraphedStep(_train_step(graphed, adamw(graphed), torch.bfloat16), "cuda")
    for seed, lengths in enumerate(LENGTHS * 3):
        batch = _batch(lengths, seed)
        got = step(pack_bucketed(batch, cfg, BUCKETS).pin_memory())
        expected = plain_step(pack_inputs(batch, cfg).to("cuda"))
        assert abs(got.item() - expected.item()) < 2e-2 * abs(expected.item()), seed
    assert step.graphs >= 2 and step.replays > step.graphs
    # dropout: the same batch replayed twice through a graph gives two different losses
    cfg_drop = tiny_config(hidden_size=128, num_heads=2, intermediate_size=256, attention_backend="auto",
                           hidden_dropout=0.1)
    model = compile_model(MosaicBertForMaskedLM(cfg_drop).cuda())
    frozen = GraphedStep(lambda inputs: _loss(model, inputs), "cuda", warmup=1)
    packed = pack_bucketed(_batch(LENGTHS[0], 0), cfg_drop, BUCKETS).pin_memory()
    losses = [frozen(packed).item() for _ in range(4)]
    assert frozen.replays == 3 and len(set(losses[1:])) == 3


def _loss(model, inputs):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(**inputs, mlm_output="loss").loss.detach()
