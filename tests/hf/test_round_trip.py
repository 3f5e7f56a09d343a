"""megabert -> Hugging Face export -> megabert is exact, for every switch combination and both heads; the files
an export writes are readable by others and never half written."""

import json
import os
import stat

import pytest
import torch

from megabert.hf.export import export_model_dir
from megabert.hf.importers import import_hf, import_mosaic
from megabert.model.pretrained import load_model_config, load_state_dict
from tests.hf.helpers import SWITCHES, model_dir

PLAIN_BERT = dict(position_embedding="learned", mlp_type="gelu")


def assert_same_model_dir(a, b):
    first, second = load_state_dict(a), load_state_dict(b)
    assert set(first) == set(second)
    for key in first:
        assert first[key].dtype == second[key].dtype and torch.equal(first[key], second[key]), key
    assert load_model_config(a) == load_model_config(b)


@pytest.mark.parametrize("switches", [*sorted(SWITCHES), "plain_bert"])
@pytest.mark.parametrize("head", ["mlm", "classifier"])
def test_export_then_import_is_bit_exact(tmp_path, vocab_file, switches, head):
    overrides = PLAIN_BERT if switches == "plain_bert" else SWITCHES[switches]
    src, _ = model_dir(tmp_path / "mb", vocab_file, head=head, unpad=False, attention_backend="eager", **overrides)
    result = export_model_dir(src, tmp_path / "hf")
    assert result.layout == ("bert" if switches == "plain_bert" else "megabert")
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert_same_model_dir(src, tmp_path / "back")
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (tmp_path / "back" / back["tokenizer"]["vocab_file"]).read_text() == vocab_file.read_text()
    if head == "classifier":
        assert back["task"] == json.loads((src / "config.json").read_text())["task"]


def test_regression_head_exports_as_a_transformers_regression_model(tmp_path, vocab_file):
    from transformers import AutoModelForSequenceClassification

    from megabert.model.bert import MosaicBertForSequenceClassification

    src, cfg = model_dir(tmp_path / "mb", vocab_file, head="regressor")
    export_model_dir(src, tmp_path / "hf")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
    ids = torch.randint(5, cfg.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = MosaicBertForSequenceClassification.from_pretrained(src).eval()(ids, mask).logits
        got = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert_same_model_dir(src, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["task"]["regression"] is True


def test_from_mosaic_reads_the_export_too(tmp_path, vocab_file):
    """A MosaicBERT export is a checkpoint in the published layout; from-mosaic accepts it as such."""
    src, _ = model_dir(tmp_path / "mb", vocab_file)
    export_model_dir(src, tmp_path / "hf")
    import_mosaic(tmp_path / "hf", tmp_path / "back")
    assert_same_model_dir(src, tmp_path / "back")


def test_model_saved_again_by_transformers_imports_back(tmp_path, vocab_file):
    """transformers' save_pretrained drops the tied decoder weight and copies the model code: still exact."""
    from transformers import AutoModelForMaskedLM

    src, _ = model_dir(tmp_path / "mb", vocab_file, **SWITCHES["alibi_gelu"])
    export_model_dir(src, tmp_path / "hf")
    AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "modeling_megabert.py").is_file()
    AutoModelForMaskedLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    import_hf(tmp_path / "again", tmp_path / "back", vocab_file=str(vocab_file))
    assert_same_model_dir(src, tmp_path / "back")


def test_exported_files_are_readable_by_others_whatever_the_umask(tmp_path, vocab_file):
    src, _ = model_dir(tmp_path / "mb", vocab_file)
    previous = os.umask(0o077)  # a user whose new files are private: the export still must be shareable
    try:
        out = export_model_dir(src, tmp_path / "hf", sentence_transformers=True, pytorch_bin=True).directory
    finally:
        os.umask(previous)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"model.safetensors", "pytorch_model.bin", "config.json", "modeling_megabert.py", "vocab.txt",
            "tokenizer.json", "modules.json"} <= {p.name for p in files}
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((out / "1_Pooling").stat().st_mode) == 0o755


def test_a_failed_write_leaves_the_previous_export_whole(tmp_path, vocab_file, monkeypatch):
    import safetensors.torch

    src, _ = model_dir(tmp_path / "mb", vocab_file)
    out = export_model_dir(src, tmp_path / "hf").directory
    before = (out / "model.safetensors").read_bytes()

    def fails_halfway(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fails_halfway)
    with pytest.raises(OSError, match="disk full"):
        export_model_dir(src, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_an_encoder_saved_by_transformers_imports_with_a_fresh_mlm_head_and_a_token_classifier_is_refused(
        tmp_path, vocab_file):
    from transformers import AutoModel, AutoModelForTokenClassification

    from megabert.hf.importers import ConversionError

    src, _ = model_dir(tmp_path / "mb", vocab_file)
    export_model_dir(src, tmp_path / "hf")
    AutoModel.from_pretrained(tmp_path / "hf", trust_remote_code=True).save_pretrained(tmp_path / "encoder")
    import_hf(tmp_path / "encoder", tmp_path / "back", vocab_file=str(vocab_file))
    original, back = load_state_dict(src), load_state_dict(tmp_path / "back")
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original if k.startswith("bert."))
    assert not torch.equal(back["head.transform.weight"], original["head.transform.weight"])  # a new head
    AutoModelForTokenClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True, num_labels=3
                                                    ).save_pretrained(tmp_path / "tagger")
    with pytest.raises(ConversionError, match="token classifier"):
        import_hf(tmp_path / "tagger", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
