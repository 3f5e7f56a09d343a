"""DataLoader workers hand staged micro-batches over through shared-memory slots: the training process gets exactly
the batches staging in-process gives, a slot is never read after it was reused, and closing frees waiting workers."""

import functools
import time

import pytest
import torch

from megabert.config import ModelConfig, load_config
from megabert.data import build_mlm_data
from megabert.model.inputs import stage_inputs, staged_numel_bound
from megabert.train.prefetch import StagedBatches
from megabert.train.shared_slots import SharedSlots, SlotRef, take_staged
from megabert.train.trainer import stage_for_training
from tests.train.launch import REPO
from tests.train.test_staging_in_workers import assert_same_model_inputs

MICRO = 8


def _pipeline(sample_corpus, workers: int):
    cfg = load_config(str(REPO / "configs" / "tiny.json"), validate=False)
    cfg.data.data_path = list(sample_corpus["data_path"])
    cfg.data.vocab_file = sample_corpus["vocab_file"]
    cfg.data.cache_dir = sample_corpus["cache_dir"]
    cfg.data.num_workers = workers
    stage = functools.partial(stage_for_training, model_cfg=cfg.model)
    data = build_mlm_data(cfg.data, seed=5, micro_batch_size=MICRO)
    return cfg, stage, data


def test_batches_through_one_slot_per_worker_equal_the_batches_staged_in_process(sample_corpus):
    """One slot per worker: every worker must wait for the consumer before each write; a consumer that dawdles
    gives them the chance to overwrite a slot too early, which the equality (and the ticket check) would catch."""
    cfg, stage, data = _pipeline(sample_corpus, workers=2)
    slots = SharedSlots(workers=2, slots_per_worker=1, slot_numel=staged_numel_bound(MICRO, cfg.data.seq_len))
    handed = data.train_batches(16, transform=slots.writer(stage))
    in_process = data.train_batches(16)
    try:
        for i in range(10):
            if i % 3 == 0:
                time.sleep(0.2)  # the workers run ahead meanwhile, as far as their slots let them
            item = next(handed)
            assert isinstance(item[1], SlotRef)
            counts, staged = take_staged(item, slots, pin=False)
            want_counts, want = stage(next(in_process))
            assert counts == want_counts
            assert_same_model_inputs(staged, want)
    finally:
        slots.close()
        handed.close()


def test_a_slot_taken_twice_fails_loudly():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    batch = {"input_ids": torch.arange(8).view(2, 4), "attention_mask": torch.ones(2, 4, dtype=torch.long),
             "labels": torch.full((2, 4), 7)}
    slots = SharedSlots(workers=1, slots_per_worker=2, slot_numel=staged_numel_bound(2, 4))
    ref = slots.put(0, stage_inputs(batch, cfg))
    assert torch.equal(slots.take(ref).flat, stage_inputs(batch, cfg).flat)
    with pytest.raises(RuntimeError, match="no longer holds"):
        slots.take(ref)


def test_the_slot_bound_is_exact_for_a_full_batch_and_a_larger_batch_is_refused():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    full = {"input_ids": torch.arange(12).view(3, 4), "attention_mask": torch.ones(3, 4, dtype=torch.long),
            "token_type_ids": torch.zeros(3, 4, dtype=torch.long), "labels": torch.full((3, 4), 7)}
    staged = stage_inputs(full, cfg)  # every token real and masked: the worst case
    assert staged.flat.numel() == staged_numel_bound(3, 4)
    with pytest.raises(ValueError, match="does not fit a slot"):
        SharedSlots(workers=1, slots_per_worker=1, slot_numel=staged_numel_bound(2, 4)).put(0, staged)


def test_closing_lets_a_worker_waiting_for_a_slot_stop_at_once(sample_corpus):
    """A worker blocked on a full slot would hold up the DataLoader's shutdown for its join timeout (5 s) and then
    be killed; closing the slots first makes it give up, and the pipeline closes in well under that."""
    cfg, stage, data = _pipeline(sample_corpus, workers=1)
    slots = SharedSlots(workers=1, slots_per_worker=1, slot_numel=staged_numel_bound(MICRO, cfg.data.seq_len))
    pipeline = StagedBatches(data.train_batches(0, transform=slots.writer(stage)), lambda item: item, depth=1,
                             on_close=slots.close)
    next(pipeline)  # its slot is never taken: the worker's next write waits for it
    time.sleep(1.0)
    start = time.perf_counter()
    pipeline.close()  # closes the slots, then the loader (its workers joined)
    assert time.perf_counter() - start < 3.0


def test_slots_dropped_without_close_still_let_their_workers_go():
    slots = SharedSlots(workers=1, slots_per_worker=1, slot_numel=4)
    closing = slots.closing
    del slots
    assert int(closing[0]) == 1


def _put_twice(slots: SharedSlots, staged, done) -> None:
    slots.put(0, staged)
    slots.put(0, staged)  # one slot: waits until the parent takes the first
    done.set()


def test_a_worker_started_by_a_forkserver_waits_for_its_slot_instead_of_giving_up():
    """Under the forkserver start method (Python 3.14's default on Linux) a worker's parent process is the
    forkserver, not the training process: the waiting worker must not take that for its consumer's death."""
    import multiprocessing

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    staged = stage_inputs({"input_ids": torch.arange(8).view(2, 4), "attention_mask": torch.ones(2, 4, dtype=torch.long),
                           "labels": torch.full((2, 4), 7)}, cfg)
    slots = SharedSlots(workers=1, slots_per_worker=1, slot_numel=staged_numel_bound(2, 4))
    context = multiprocessing.get_context("forkserver")
    done = context.Event()
    worker = context.Process(target=_put_twice, args=(slots, staged, done))
    worker.start()
    deadline = time.monotonic() + 60
    while int(slots.state[0]) != 1 and time.monotonic() < deadline:  # the first put has landed
        time.sleep(0.01)
    time.sleep(0.3)  # the worker is now waiting for the slot
    assert not done.is_set() and worker.is_alive()
    slots.take(SlotRef(0, 1, staged.flat.numel(), staged.layout, staged.unpadded))
    worker.join(60)
    assert worker.exitcode == 0 and done.is_set()


def test_too_little_shared_memory_for_the_slots_is_named_with_the_size_needed(monkeypatch):
    def no_space(self):
        raise RuntimeError("unable to write to file </torch_1_2_3>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_space)
    with pytest.raises(RuntimeError, match=r"3\.0 MiB of shared memory .* /dev/shm .* No space left"):
        SharedSlots(workers=2, slots_per_worker=3, slot_numel=2 ** 16)


def test_a_slot_is_copied_into_the_callers_buffer_when_given_one():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    staged = stage_inputs({"input_ids": torch.arange(8).view(2, 4), "attention_mask": torch.ones(2, 4, dtype=torch.long),
                           "labels": torch.full((2, 4), 7)}, cfg)
    slots = SharedSlots(workers=1, slots_per_worker=1, slot_numel=staged_numel_bound(2, 4))
    out = torch.full((staged_numel_bound(2, 4),), -1, dtype=torch.int64)
    taken = slots.take(slots.put(0, staged), out=out)
    assert taken.flat.data_ptr() == out.data_ptr() and torch.equal(taken.flat, staged.flat)
    assert int(slots.state[0]) == 0  # freed: the next put does not wait
    slots.put(0, staged)
