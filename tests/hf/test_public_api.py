"""The public Python API: `from megabert import ...` and from_pretrained / save_pretrained on megabert model dirs."""

import json
import subprocess
import sys

import pytest
import torch

from megabert.config import ModelConfig
from megabert.model.pretrained import ModelDirError, load_state_dict
from tests.hf.helpers import LABELS, model_dir
from tests.tasks.tiny_model import REPO_ROOT


def test_public_names_import_from_the_package_and_import_megabert_loads_no_torch():
    script = ("import sys, megabert; from megabert import ModelConfig; "
              "assert 'torch' not in sys.modules, 'import megabert loaded torch'; print(ModelConfig().hidden_size)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "768", result.stderr[-2000:]
    import megabert
    import megabert.model
    from megabert.model import bert

    for name in ("MosaicBertModel", "MosaicBertForMaskedLM", "MosaicBertForSequenceClassification"):
        assert getattr(megabert, name) is getattr(bert, name) is getattr(megabert.model, name)
    assert megabert.ModelConfig is ModelConfig
    with pytest.raises(AttributeError, match="no attribute 'MosaicBert'"):
        megabert.MosaicBert


def test_masked_lm_from_pretrained_loads_the_dir_and_save_pretrained_writes_it_back(tmp_path, vocab_file):
    from megabert import MosaicBertForMaskedLM

    src, _ = model_dir(tmp_path / "mb", vocab_file)
    model = MosaicBertForMaskedLM.from_pretrained(src)
    saved = load_state_dict(src)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path / "copy")
    copied = load_state_dict(tmp_path / "copy")
    assert set(copied) == set(saved) and all(torch.equal(copied[k], saved[k]) for k in saved)
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["tokenizer"] == {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": "vocab.txt"}
    assert (tmp_path / "copy" / "vocab.txt").read_text() == vocab_file.read_text()
    assert config["data"] == json.loads((src / "config.json").read_text())["data"]


def test_encoder_and_classifier_take_what_they_need_from_a_model_dir(tmp_path, vocab_file):
    from megabert import MosaicBertForSequenceClassification, MosaicBertModel

    mlm, cfg = model_dir(tmp_path / "mlm", vocab_file)
    saved = load_state_dict(mlm)
    encoder = MosaicBertModel.from_pretrained(mlm)
    assert all(torch.equal(v, saved[f"bert.{k}"]) for k, v in encoder.state_dict().items())
    fresh = MosaicBertForSequenceClassification.from_pretrained(mlm, num_labels=4)  # fine-tuning starts here
    assert fresh.classifier.out_features == 4
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items() if k.startswith("bert."))

    classifier_dir, _ = model_dir(tmp_path / "cls", vocab_file, head="classifier")
    classifier = MosaicBertForSequenceClassification.from_pretrained(classifier_dir)
    assert classifier.num_labels == len(LABELS)
    saved = load_state_dict(classifier_dir)
    assert all(torch.equal(v, saved[k]) for k, v in classifier.state_dict().items())
    with pytest.raises(ModelDirError, match="3 labels, not 2"):
        MosaicBertForSequenceClassification.from_pretrained(classifier_dir, num_labels=2)


def test_from_pretrained_refuses_what_it_cannot_load_exactly(tmp_path, vocab_file):
    from megabert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification

    classifier_dir, _ = model_dir(tmp_path / "cls", vocab_file, head="classifier")
    with pytest.raises(ModelDirError, match="lacks an MLM head"):
        MosaicBertForMaskedLM.from_pretrained(classifier_dir)
    mlm, _ = model_dir(tmp_path / "mlm", vocab_file)
    with pytest.raises(TypeError, match="pass num_labels"):
        MosaicBertForSequenceClassification.from_pretrained(mlm)
    with pytest.raises(TypeError, match="cannot override hidden_size"):
        MosaicBertForMaskedLM.from_pretrained(mlm, hidden_size=64)
    model = MosaicBertForMaskedLM.from_pretrained(mlm, attention_backend="eager", unpad=False)
    assert model.cfg.attention_backend == "eager" and not model.cfg.unpad


def test_from_pretrained_says_what_a_directory_is_when_it_is_not_a_model_dir(tmp_path):
    from megabert import MosaicBertForMaskedLM

    step = tmp_path / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (step / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(ModelDirError, match=r"training checkpoint.*export it first: python -m megabert\.\S+\.export"):
        MosaicBertForMaskedLM.from_pretrained(step)
    with pytest.raises(ModelDirError, match="directory of training checkpoints"):
        MosaicBertForMaskedLM.from_pretrained(tmp_path / "checkpoints")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelDirError, match="Hugging Face config.*from-hf"):
        MosaicBertForMaskedLM.from_pretrained(hf)
