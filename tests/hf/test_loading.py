"""Loading an export: with trust_remote_code every tensor comes from the file (nothing newly initialised, nothing
left over); without it transformers refuses with its own message instead of building a BERT with random weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megabert.hf.export import export_model_dir
from tests.hf.helpers import SWITCHES, model_dir

AUTO_CLASSES = ("AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
                "AutoModelForTokenClassification")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, vocab_file):
    root = tmp_path_factory.mktemp("exports")
    mlm, _ = model_dir(root / "mlm", vocab_file, **SWITCHES["mosaicbert"])
    classifier, _ = model_dir(root / "classifier", vocab_file, head="classifier", **SWITCHES["mosaicbert"])
    return export_model_dir(mlm, root / "mlm_hf").directory, export_model_dir(classifier, root / "cls_hf").directory


def auto(name: str):
    import transformers

    return getattr(transformers, name)


def test_config_names_its_own_model_type_and_code_for_every_auto_class(exports):
    config = json.loads((exports[0] / "config.json").read_text())
    assert config["model_type"] == "megabert"
    assert set(config["auto_map"]) == {"AutoConfig", *AUTO_CLASSES}
    for target in config["auto_map"].values():
        module, _ = target.split(".")
        assert (exports[0] / f"{module}.py").is_file()


@pytest.mark.parametrize("name", ["AutoConfig", *AUTO_CLASSES])
def test_loading_without_trust_remote_code_raises(exports, name, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "TIME_OUT_REMOTE_CODE", 0)  # no interactive prompt: answer as CI does
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        auto(name).from_pretrained(exports[0])


def assert_every_tensor_from_the_file(model, export_dir, prefix_free: bool = False):
    """The loaded parameters are the file's tensors, bit for bit (no initialiser ran over them after loading)."""
    saved = load_file(str(export_dir / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in state.items():
        name = f"bert.{key}" if prefix_free else key
        assert torch.equal(tensor, saved[name]), key


@pytest.mark.parametrize("name,which", [("AutoModel", 0), ("AutoModelForMaskedLM", 0), ("AutoModel", 1),
                                        ("AutoModelForSequenceClassification", 1)])
def test_auto_classes_load_every_tensor_of_their_export(exports, name, which):
    model, info = auto(name).from_pretrained(exports[which], trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert_every_tensor_from_the_file(model, exports[which], prefix_free=name == "AutoModel")


def test_a_new_head_is_the_only_thing_initialised(exports):
    """Token classification (and sequence classification from an MLM export) start a head; the encoder loads."""
    model, info = auto("AutoModelForTokenClassification").from_pretrained(
        exports[0], trust_remote_code=True, num_labels=4, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("bert.")}
    saved = load_file(str(exports[0] / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in encoder.items())
    _, info = auto("AutoModelForSequenceClassification").from_pretrained(
        exports[0], trust_remote_code=True, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
                                         "bert.pooler.dense.bias"}


def test_decoder_stays_tied_to_the_word_embeddings(exports):
    model = auto("AutoModelForMaskedLM").from_pretrained(exports[0], trust_remote_code=True)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_attn_implementation_values_are_accepted_and_leave_the_outputs_unchanged(exports):
    """The model picks its attention itself; "sdpa" and "eager" load and compute the same, and asking for
    flash-attn where it cannot run (here: CPU, fp32) fails with the reason instead of silently using SDPA."""
    ids = torch.randint(5, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    outputs = []
    for impl in ("sdpa", "eager"):
        model = auto("AutoModel").from_pretrained(exports[0], trust_remote_code=True, attn_implementation=impl)
        with torch.no_grad():
            outputs.append(model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.equal(outputs[0], outputs[1])
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2' needs the flash_attn package"):
        model(input_ids=ids, attention_mask=mask)
