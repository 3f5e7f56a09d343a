"""pack_inputs: a batch's model inputs travel as one buffer plus the unpadding numbers, and unpack exactly."""

import torch

from megabert.config import ModelConfig
from megabert.model.inputs import pack_inputs


def test_a_packed_batch_holds_one_buffer_and_its_unpadding_numbers():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, 7, -100, -100], [9, -100, -100, -100]])
    packed = pack_inputs({"input_ids": torch.arange(8).view(2, 4), "attention_mask": mask, "labels": labels}, cfg)
    tensors = [v for v in vars(packed).values() if torch.is_tensor(v)]
    assert len(tensors) == 1 and packed.unpadded.indices is None and packed.unpadded.cu_seqlens is None
    inputs = packed.to("cpu")
    assert inputs["unpadded"].indices.tolist() == [0, 1, 2, 4, 5]
    assert inputs["unpadded"].cu_seqlens.tolist() == [0, 3, 5] and inputs["unpadded"].max_seqlen == 3
    assert inputs["masked_token_index"].tolist() == [1, 3]
