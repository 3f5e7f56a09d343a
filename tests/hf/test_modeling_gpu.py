"""On a GPU in bf16: the export's flash-attn varlen path (ALiBi slopes in the kernel) and its SDPA path agree with
an fp32 reference about as well as megabert's own bf16 model does. Run: python -m pytest -q -m gpu tests/hf"""

import sys

import pytest
import torch

from megabert.hf.export import export_model_dir
from megabert.model.bert import MosaicBertForMaskedLM
from tests.hf.helpers import SWITCHES, batches, model_dir


def bf16_error(logits: torch.Tensor, reference: torch.Tensor, real: torch.Tensor) -> float:
    return (logits.float()[real] - reference[real]).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["flash_attn", "sdpa"])
def test_export_in_bf16_on_gpu_is_as_close_to_fp32_as_megabert(tmp_path, vocab_file, path, monkeypatch):
    from transformers import AutoModelForMaskedLM

    if path == "flash_attn":
        pytest.importorskip("flash_attn")
    src, cfg = model_dir(tmp_path / "mb", vocab_file, **SWITCHES["mosaicbert"])
    export_model_dir(src, tmp_path / "hf")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).cuda().eval()
    modeling = sys.modules[type(hf).__module__]
    if path == "sdpa":
        monkeypatch.setattr(modeling, "flash_attn_varlen_qkvpacked_func", None)
    assert (modeling.flash_attn_varlen_qkvpacked_func is not None) == (path == "flash_attn")
    reference = MosaicBertForMaskedLM.from_pretrained(src, attention_backend="eager").cuda().eval()
    ours_bf16 = MosaicBertForMaskedLM.from_pretrained(src).cuda().eval()
    for name, (ids, mask, types) in batches(cfg.vocab_size, False, 0).items():
        ids, types = ids.cuda(), types.cuda()
        mask = mask.cuda() if mask is not None else None
        real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        with torch.no_grad():
            expected = reference(ids, mask, types).logits.float()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                ours = ours_bf16(ids, mask, types).logits
        assert bf16_error(theirs, expected, real) <= 2 * bf16_error(ours, expected, real) + 2e-2, name
