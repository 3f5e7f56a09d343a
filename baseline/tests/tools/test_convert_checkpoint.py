"""Export/import round trips: Hugging Face BERT (same logits in transformers) and the MosaicBERT layout."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from megabert.model import mosaic_mapping
from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.model.pretrained import load_model_config, load_state_dict, save_pretrained
from megabert.ops.alibi import alibi_slopes
from megabert.model.pretrained import attach_tokenizer
from tests.tasks.tiny_model import load_tool, make_model_dir, tiny_config

convert = load_tool("convert_checkpoint")

PUBLISHED_LAYER_KEYS = [  # mosaicml/mosaic-bert-base pytorch_model.bin, per layer N
    "attention.self.Wqkv.weight", "attention.self.Wqkv.bias", "attention.output.dense.weight",
    "attention.output.dense.bias", "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "mlp.gated_layers.weight", "mlp.wo.weight", "mlp.wo.bias", "mlp.layernorm.weight", "mlp.layernorm.bias"]
PUBLISHED_OTHER_KEYS = [
    "bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias", "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]


def published_keys(num_layers: int) -> set:
    return set(PUBLISHED_OTHER_KEYS) | {f"bert.encoder.layer.{i}.{k}" for i in range(num_layers)
                                        for k in PUBLISHED_LAYER_KEYS}


def batch(vocab_size: int):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[2, 5:] = 0, 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


def megabert_logits(model_dir, ids, mask, types) -> torch.Tensor:
    cfg = load_model_config(model_dir)
    model = MosaicBertForMaskedLM(cfg)
    model.load_state_dict(load_state_dict(model_dir))
    with torch.no_grad():
        return model.eval()(ids, mask, types).logits  # [B, S, V]


def randomize_norms(model_dir):
    """Random LayerNorm and bias values, so a swapped or dropped tensor cannot hide behind init constants."""
    state = load_state_dict(model_dir)
    gen = torch.Generator().manual_seed(7)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=gen) if v.dim() == 1 else v) for k, v in state.items()}
    cfg = load_model_config(model_dir)
    model = MosaicBertForMaskedLM(cfg)
    model.load_state_dict(state)
    config = json.loads((model_dir / "config.json").read_text())
    save_pretrained(model, model_dir, cfg, extra={k: v for k, v in config.items() if k != "model"})


def test_plain_bert_export_gives_transformers_the_same_logits_and_round_trips(tmp_path, vocab_file):
    from transformers import AutoTokenizer, BertForMaskedLM

    src = make_model_dir(tmp_path / "src", vocab_file, position_embedding="learned", mlp_type="gelu")
    randomize_norms(src)
    assert convert.main(["to-hf", str(src), str(tmp_path / "hf")]) == 0
    ids, mask, types = batch(load_model_config(src).vocab_size)
    ours = megabert_logits(src, ids, mask, types)
    hf = BertForMaskedLM.from_pretrained(tmp_path / "hf", local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    torch.testing.assert_close(theirs[real], ours[real], rtol=1e-5, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert tokenizer("the film was great")["input_ids"][0] == tokenizer.cls_token_id

    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    torch.testing.assert_close(megabert_logits(tmp_path / "back", ids, mask, types), ours, rtol=0, atol=0)
    assert (tmp_path / "back" / "vocab.txt").read_text() == vocab_file.read_text()


def test_from_hf_pads_vocab_and_accepts_transformers_checkpoints(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    hf_cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = BertForMaskedLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "mb")]) == 0
    cfg = load_model_config(tmp_path / "mb")
    assert cfg.vocab_size == 128 and cfg.attention_dropout == 0.1  # BERT's; training routes it through SDPA
    ids, mask, types = batch(100)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    ours = megabert_logits(tmp_path / "mb", ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(ours[real][:, :100], theirs[real], rtol=1e-5, atol=1e-5)
    assert (ours[real][:, 100:] < -1e3).all()  # padded vocabulary rows are never predicted


def test_mosaic_export_uses_the_published_key_layout_and_round_trips(tmp_path, vocab_file):
    src = make_model_dir(tmp_path / "src", vocab_file)
    randomize_norms(src)
    assert convert.main(["to-hf", str(src), str(tmp_path / "mosaic"), "--pytorch-bin"]) == 0
    state = torch.load(tmp_path / "mosaic" / "pytorch_model.bin", weights_only=True)
    assert set(state) == published_keys(2)
    config = json.loads((tmp_path / "mosaic" / "config.json").read_text())
    for field in ("alibi_starting_size", "attention_probs_dropout_prob", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "vocab_size", "hidden_act", "layer_norm_eps"):
        assert field in config
    assert config["architectures"] == ["BertForMaskedLM"] and config["attention_probs_dropout_prob"] == 0.0

    assert convert.main(["from-mosaic", str(tmp_path / "mosaic"), str(tmp_path / "back")]) == 0
    ids, mask, types = batch(config["vocab_size"])
    torch.testing.assert_close(megabert_logits(tmp_path / "back", ids, mask, types),
                               megabert_logits(src, ids, mask, types), rtol=0, atol=0)


def mosaic_reference_logits(state: dict, config: dict, ids, mask, types) -> torch.Tensor:
    """MosaicBERT's forward written from its published layout (bert_layers.py semantics), on padded batches."""
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    d, eps, inter = hidden // heads, config["layer_norm_eps"], config["intermediate_size"]
    ln = lambda x, p: F.layer_norm(x, (hidden,), state[p + ".weight"], state[p + ".bias"], eps)
    lin = lambda x, p: F.linear(x, state[p + ".weight"], state.get(p + ".bias"))
    x = ln(state["bert.embeddings.word_embeddings.weight"][ids]
           + state["bert.embeddings.token_type_embeddings.weight"][types], "bert.embeddings.LayerNorm")
    batch_size, seq = ids.shape
    pos = torch.arange(seq)
    bias = -alibi_slopes(heads)[:, None, None] * (pos[None, :] - pos[:, None]).abs()  # [heads, S, S]
    bias = bias[None] + (1.0 - mask[:, None, None, :].float()) * -10000.0  # [B, heads, S, S]
    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        qkv = lin(x, p + "attention.self.Wqkv").view(batch_size, seq, 3, heads, d)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # [B, heads, S, d]
        probs = (q @ k.transpose(-1, -2) / math.sqrt(d) + bias).softmax(-1)
        context = (probs @ v).transpose(1, 2).reshape(batch_size, seq, hidden)
        x = ln(lin(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        gated = lin(x, p + "mlp.gated_layers")
        x = ln(lin(F.gelu(gated[..., :inter]) * gated[..., inter:], p + "mlp.wo") + x, p + "mlp.layernorm")
    x = F.layer_norm(F.gelu(lin(x, "cls.predictions.transform.dense")), (hidden,),
                     state["cls.predictions.transform.LayerNorm.weight"],
                     state["cls.predictions.transform.LayerNorm.bias"], 1e-12)
    return lin(x, "cls.predictions.decoder")


def test_import_of_a_published_layout_checkpoint_matches_mosaic_semantics(tmp_path, vocab_file):
    """Random weights with exactly the published keys and shapes, composer's 'model.' prefix, no tokenizer."""
    config = {"architectures": ["BertForMaskedLM"], "alibi_starting_size": 512, "attention_probs_dropout_prob": 0.0,
              "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02,
              "intermediate_size": 48, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 0,
              "position_embedding_type": "absolute", "type_vocab_size": 2, "vocab_size": 128}
    h, inter, v = 32, 48, 128
    shapes = {"Wqkv.weight": (3 * h, h), "Wqkv.bias": (3 * h,), "gated_layers.weight": (2 * inter, h),
              "mlp.wo.weight": (h, inter), "word_embeddings.weight": (v, h), "token_type_embeddings.weight": (2, h),
              "dense.weight": (h, h), "decoder.weight": (v, h), "decoder.bias": (v,)}
    torch.manual_seed(0)
    state = {}
    for key in sorted(published_keys(2)):
        shape = next((s for suffix, s in shapes.items() if key.endswith(suffix)), (h,))
        state[key] = torch.randn(shape) * (0.2 if len(shape) == 2 else 1.0)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]  # tied
    src = tmp_path / "published"
    src.mkdir()
    torch.save({f"model.{k}": t for k, t in state.items()}, src / "pytorch_model.bin")
    (src / "config.json").write_text(json.dumps(config))

    assert convert.main(["from-mosaic", str(src), str(tmp_path / "mb"), "--vocab-file", str(vocab_file)]) == 0
    ids, mask, types = batch(v)
    ours = megabert_logits(tmp_path / "mb", ids, mask, types)
    reference = mosaic_reference_logits(state, config, ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "mb" / "config.json").read_text())["tokenizer"]["vocab_file"] == "vocab.txt"

    del state["bert.encoder.layer.1.mlp.wo.bias"]
    torch.save(state, src / "pytorch_model.bin")
    assert convert.main(["from-mosaic", str(src), str(tmp_path / "bad")]) == 2


def test_classifier_round_trip_through_mosaic_layout(tmp_path, vocab_file):
    cfg = tiny_config(sum(1 for _ in open(vocab_file)))
    torch.manual_seed(3)
    model = MosaicBertForSequenceClassification(cfg, 3).eval()
    save_pretrained(model, tmp_path / "cls", cfg, extra={"task": {"name": "mnli", "labels": ["a", "b", "c"],
                                                                   "regression": False}})
    attach_tokenizer(tmp_path / "cls", "BertWordPieceLowerCase", vocab_file=str(vocab_file))
    assert convert.main(["to-hf", str(tmp_path / "cls"), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"]["2"] == "c"
    assert convert.main(["from-mosaic", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    back = MosaicBertForSequenceClassification(cfg, 3).eval()
    back.load_state_dict(load_state_dict(tmp_path / "back"))
    ids, mask, types = batch(cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask, types).logits, model(ids, mask, types).logits, rtol=0, atol=0)


def test_mixed_switches_are_refused_with_a_reason(tmp_path, vocab_file, capsys):
    src = make_model_dir(tmp_path / "src", vocab_file, position_embedding="alibi", mlp_type="gelu")
    assert convert.main(["to-hf", str(src), str(tmp_path / "out")]) == 2
    assert "mixes switches" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs model.position_embedding='alibi'"):
        mosaic_mapping.megabert_to_mosaic(load_state_dict(src), load_model_config(src))


def test_plain_bert_classifier_exports_to_transformers_sequence_classification(tmp_path, vocab_file):
    from transformers import BertForSequenceClassification

    cfg = tiny_config(sum(1 for _ in open(vocab_file)), position_embedding="learned", mlp_type="gelu")
    torch.manual_seed(4)
    model = MosaicBertForSequenceClassification(cfg, 2).eval()
    save_pretrained(model, tmp_path / "cls", cfg, extra={"task": {"name": "sst2", "labels": ["neg", "pos"],
                                                                   "regression": False}})
    assert convert.main(["to-hf", str(tmp_path / "cls"), str(tmp_path / "hf")]) == 0
    hf = BertForSequenceClassification.from_pretrained(tmp_path / "hf", local_files_only=True,
                                                       attn_implementation="eager").eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    ids, mask, types = batch(cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   model(ids, mask, types).logits, rtol=1e-5, atol=1e-5)
