"""Token-count buckets: padding a batch to its bucket changes neither the loss nor any gradient (fp32, up to the
order of fp32 sums), every bucket is reachable, shapes depend only on the bucket, and other shapes fall out."""

import pytest
import torch

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.buckets import BucketedInputs, TokenBuckets, pack_bucketed
from megabert.model.inputs import prepare_inputs
from tests.model.helpers import tiny_config

BATCH, SEQ = 4, 16
BUCKETS = TokenBuckets(BATCH, SEQ, token_step=16, masked_step=8)


def _batch(lengths: list[int], masked: int, seed: int = 0) -> dict:
    """[BATCH, SEQ] ids of sequences with `lengths`, exactly `masked` labelled real tokens."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(SEQ)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, 128, (BATCH, SEQ), generator=gen) * mask
    real = mask.flatten().nonzero().flatten()
    chosen = real[torch.randperm(real.numel(), generator=gen)[:masked]]
    labels = torch.full((BATCH * SEQ,), -100)
    labels[chosen] = ids.flatten()[chosen]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels.view(BATCH, SEQ),
            "token_type_ids": (torch.arange(SEQ)[None, :] >= 5).long().expand(BATCH, SEQ) * mask}


def _lengths_for(tokens: int) -> list[int]:
    full, rest = divmod(tokens, SEQ)
    lengths = [SEQ] * full + ([rest] if rest else [])
    return (lengths + [0] * BATCH)[:BATCH] if tokens else [1] + [0] * (BATCH - 1)


def _cases() -> list[tuple[int, int]]:
    """(T, M) pairs that between them reach every T bucket and every M bucket."""
    tokens = [1, 5, 16, 17, 31, 40, 63, BATCH * SEQ]  # exact multiples of the step and the full grid among them
    cases = [(t, min(3, t)) for t in tokens]
    cases += [(max(m, tokens[i % len(tokens)]), m) for i, m in enumerate(BUCKETS.masked_buckets())]
    return cases


def test_the_cases_reach_every_bucket():
    reached_t = {BUCKETS.tokens_bucket(t) for t, _ in _cases()}
    reached_m = {BUCKETS.masked_bucket(m) for _, m in _cases()}
    assert reached_t == set(BUCKETS.token_buckets()) == {16, 32, 48, 64, 65}
    assert reached_m == set(BUCKETS.masked_buckets())


def _loss_and_grads(model, inputs, mlm_output):
    model.zero_grad()
    out = model(**inputs, mlm_output=mlm_output)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_padding_to_every_bucket_keeps_loss_and_gradients():
    _check_padding_keeps_loss_and_gradients(True, True, "loss", _cases())  # the training path, every bucket


@pytest.mark.parametrize("unpad,sparse,mlm_output", [(True, True, "logits"), (False, True, "loss"),
                                                    (True, False, "loss")])
def test_padding_keeps_loss_and_gradients_of_the_other_heads_and_layouts(unpad, sparse, mlm_output):
    _check_padding_keeps_loss_and_gradients(unpad, sparse, mlm_output, [(5, 3), (17, 9), (40, 33), (64, 64)])


def _check_padding_keeps_loss_and_gradients(unpad, sparse, mlm_output, cases):
    torch.manual_seed(0)
    cfg = tiny_config(unpad=unpad, sparse_mlm_head=sparse, position_embedding="learned" if not unpad else "alibi")
    model = MosaicBertForMaskedLM(cfg)
    for i, (tokens, masked) in enumerate(cases):
        batch = _batch(_lengths_for(tokens), masked, seed=i)
        if masked == 0:
            continue  # no labelled token: the loss is NaN either way
        ref_loss, ref_grads = _loss_and_grads(model, prepare_inputs(batch, cfg, "cpu"), mlm_output)
        packed = pack_bucketed(batch, cfg, BUCKETS)
        loss, grads = _loss_and_grads(model, packed.to("cpu"), mlm_output)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0, msg=f"T={tokens} M={masked}")
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            assert_equal_up_to_sum_order(grads[name], grad, f"{name} T={tokens} M={masked}")


def assert_equal_up_to_sum_order(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Equal but for the order of fp32 sums (a GEMM over more, zero-gradient rows blocks its sums differently): a
    few ulps of the tensor's largest entry. A dummy token or row that leaked into the loss moves entries by orders
    of magnitude more."""
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-6 * ref.abs().max().item(), f"{what}: max difference {diff:.3e}"


def test_bucketed_shapes_are_the_bucket_sizes_and_the_same_for_every_batch_in_it():
    cfg = tiny_config()
    a = pack_bucketed(_batch([16, 9, 0, 0], 7, seed=1), cfg, BUCKETS)
    b = pack_bucketed(_batch([3, 3, 3, 10], 2, seed=2), cfg, BUCKETS)
    assert isinstance(a, BucketedInputs) and a.shape_key == b.shape_key
    shapes = {name: tuple(shape) for name, shape, _ in a.layout}
    assert shapes["input_ids"] == (BATCH + 1, SEQ)  # one extra row of padding
    assert shapes["indices"] == (32,) and shapes["masked_token_index"] == (8,)
    assert shapes["cu_seqlens"] == (BATCH + 1 + BUCKETS.dummy_segments,)
    assert a.unpadded.max_seqlen == SEQ and a.unpadded.batch == BATCH + 1
    c = pack_bucketed(_batch([16, 16, 0, 0], 9, seed=3), cfg, BUCKETS)  # T = 32 is a step: the next bucket
    assert c.shape_key != a.shape_key and dict((n, tuple(s)) for n, s, _ in c.layout)["indices"] == (48,)


def test_a_batch_without_padding_gets_one_dummy_token():
    packed = pack_bucketed(_batch([SEQ] * BATCH, 20), tiny_config(), BUCKETS)
    inputs = packed.to("cpu")
    assert inputs["unpadded"].indices.numel() == BATCH * SEQ + 1
    assert inputs["unpadded"].cu_seqlens.tolist()[-BUCKETS.dummy_segments - 1:] == [64, 65] + [65] * (
        BUCKETS.dummy_segments - 1)


def test_dummy_tokens_form_sequences_of_at_most_seq_len():
    buckets = TokenBuckets(BATCH, SEQ, token_step=48, masked_step=8)  # gaps up to 48 tokens: 3 dummy sequences
    packed = pack_bucketed(_batch([1, 0, 0, 0], 1), tiny_config(), buckets)
    cu = packed.to("cpu")["unpadded"].cu_seqlens
    assert cu.tolist() == [0, 1, 1, 1, 1, 17, 33, 48]
    assert (cu[1:] - cu[:-1]).max() <= SEQ


def test_other_batch_shapes_are_outside_the_buckets_and_unlabelled_batches_are_refused():
    cfg = tiny_config()
    wide = {k: torch.cat([v, v], dim=0) for k, v in _batch([5, 5, 5, 5], 4).items()}  # [2 * BATCH, SEQ]
    assert pack_bucketed(wide, cfg, BUCKETS) is None
    batch = _batch([5, 5, 5, 5], 4)
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        pack_bucketed(batch, cfg, BUCKETS)


def test_default_steps_suit_the_benchmark_batches():
    base_128 = TokenBuckets.for_batch(256, 128)
    assert base_128.token_step == 512 and base_128.dummy_segments == 4 and base_128.masked_step == 192
    base_512 = TokenBuckets.for_batch(64, 512)
    assert base_512.token_step == 512 and base_512.dummy_segments == 1
    with pytest.raises(ValueError, match="multiple of seq_len"):
        TokenBuckets(4, 16, token_step=20, masked_step=8)
