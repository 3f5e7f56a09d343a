"""SentenceTransformer(export, trust_remote_code=True).encode gives megabert's pooled encoder output."""

import json

import pytest
import torch

from megabert.hf.export import export_model_dir
from megabert.model.bert import MosaicBertModel
from megabert.tasks.tokenizer import load_tokenizer
from tests.hf.helpers import SWITCHES, model_dir

SENTENCES = ["The film was brilliant.", "A man is playing a guitar on a stage in front of a crowd.", "short",
             "the soundtrack was terrible , and the plot made no sense at all ."]


def megabert_embeddings(directory, pooling: str) -> torch.Tensor:
    """Mean over the real tokens, or the [CLS] token, of megabert's encoder output: [N, H]."""
    encoder = load_tokenizer(directory, seq_len=512)
    ids, types = encoder.encode(SENTENCES, None)
    length = max(map(len, ids))
    pad = encoder.tokenizer.pad_id
    input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids])
    model = MosaicBertModel.from_pretrained(directory, attention_backend="eager").eval()
    with torch.no_grad():
        hidden, layout = model(input_ids, mask, torch.zeros_like(input_ids))
        hidden = layout.to_padded(hidden)  # [N, S, H]
    if pooling == "cls":
        return hidden[:, 0]
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_transformers_encodes_to_megabert_pooled_output(tmp_path, vocab_file, pooling):
    from sentence_transformers import SentenceTransformer

    src, cfg = model_dir(tmp_path / "mb", vocab_file, **SWITCHES["mosaicbert"])
    args = {} if pooling == "mean" else {"pooling": "cls"}  # mean is the default
    out = export_model_dir(src, tmp_path / "st", sentence_transformers=True, **args).directory
    pooling_config = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode_mean_tokens"] == (pooling == "mean")
    model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    got = model.encode(SENTENCES, convert_to_tensor=True, batch_size=3)
    assert got.shape == (len(SENTENCES), cfg.hidden_size)
    torch.testing.assert_close(got, megabert_embeddings(src, pooling), rtol=0, atol=1e-5)


def test_export_without_the_option_has_no_sentence_transformers_files(tmp_path, vocab_file):
    src, _ = model_dir(tmp_path / "mb", vocab_file)
    out = export_model_dir(src, tmp_path / "hf", sentence_transformers=True).directory
    assert (out / "modules.json").is_file()
    export_model_dir(src, out)  # exported again into the same dir, without the option: nothing stale stays
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()
