"""The export, loaded through each Auto class with trust_remote_code=True, computes what megabert computes:
within 1e-5 in fp32 on padded and unpadded batches, mixed lengths, and inputs longer than pretraining's."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from megabert.hf.export import export_model_dir
from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification, MosaicBertModel
from tests.hf.helpers import SWITCHES, batches, model_dir, real_tokens

ATOL = 1e-5
BACKENDS = ("eager", "sdpa")  # megabert's CPU attention paths


@pytest.fixture(scope="module", params=sorted(SWITCHES))
def exported(request, tmp_path_factory, vocab_file):
    """(megabert MLM dir, megabert classifier dir, their exports, ModelConfig) for one switch combination."""
    root = tmp_path_factory.mktemp(request.param)
    mlm, cfg = model_dir(root / "mlm", vocab_file, **SWITCHES[request.param])
    classifier, _ = model_dir(root / "classifier", vocab_file, head="classifier", seed=5, **SWITCHES[request.param])
    export_model_dir(mlm, root / "mlm_hf")
    export_model_dir(classifier, root / "classifier_hf")
    return mlm, classifier, root / "mlm_hf", root / "classifier_hf", cfg


def imported_packages(path) -> set:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    return {name.split(".")[0] for name in names}


def test_export_code_imports_only_torch_and_transformers(exported):
    _, _, mlm_hf, _, _ = exported
    packages = set().union(*(imported_packages(mlm_hf / name)
                             for name in ("modeling_megabert.py", "configuration_megabert.py")))
    assert packages <= {"math", "typing", "torch", "transformers", "flash_attn"}, packages


def test_export_loads_where_megabert_cannot_be_imported(tmp_path, vocab_file):
    """A fresh interpreter in which `import megabert` fails loads the export and reproduces the logits."""
    mlm, cfg = model_dir(tmp_path / "mlm", vocab_file, **SWITCHES["mosaicbert"])
    mlm_hf = export_model_dir(mlm, tmp_path / "hf").directory
    ids, mask, types = batches(cfg.vocab_size, False, 0)["padded"]
    from transformers import AutoModelForMaskedLM

    with torch.no_grad():
        expected = AutoModelForMaskedLM.from_pretrained(mlm_hf, trust_remote_code=True).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    torch.save({"ids": ids, "mask": mask, "types": types, "expected": expected}, tmp_path / "batch.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["megabert"] = None  # any import of megabert now raises ImportError
        import torch
        from transformers import AutoModelForMaskedLM
        b = torch.load({str(tmp_path / "batch.pt")!r})
        model = AutoModelForMaskedLM.from_pretrained({str(mlm_hf)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            got = model(input_ids=b["ids"], attention_mask=b["mask"], token_type_ids=b["types"]).logits
        assert torch.equal(got, b["expected"]), (got - b["expected"]).abs().max()
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def each_batch(cfg):
    yield from batches(cfg.vocab_size, cfg.position_embedding == "learned", cfg.max_position_embeddings).items()


def test_masked_lm_logits_match_megabert(exported):
    from transformers import AutoModelForMaskedLM

    mlm, _, mlm_hf, _, cfg = exported
    hf = AutoModelForMaskedLM.from_pretrained(mlm_hf, trust_remote_code=True).eval()
    for backend in BACKENDS:
        ours = MosaicBertForMaskedLM.from_pretrained(mlm, attention_backend=backend).eval()
        for name, (ids, mask, types) in each_batch(cfg):
            with torch.no_grad():
                expected = ours(ids, mask, types).logits  # [B, S, V]
                got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            real = real_tokens(mask, ids)
            torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL, msg=f"{backend}, {name}")


def test_encoder_hidden_states_match_megabert(exported):
    from transformers import AutoModel

    mlm, _, mlm_hf, _, cfg = exported
    hf = AutoModel.from_pretrained(mlm_hf, trust_remote_code=True).eval()
    for backend in BACKENDS:
        ours = MosaicBertModel.from_pretrained(mlm, attention_backend=backend).eval()
        for name, (ids, mask, types) in each_batch(cfg):
            with torch.no_grad():
                hidden, layout = ours(ids, mask, types)
                expected = layout.to_padded(hidden)  # [B, S, H]
                out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
            real = real_tokens(mask, ids)
            torch.testing.assert_close(out.last_hidden_state[real], expected[real], rtol=0, atol=ATOL,
                                       msg=f"{backend}, {name}")
            assert len(out.hidden_states) == cfg.num_layers + 1
            assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
            assert (out.last_hidden_state[~real] == 0).all()  # padding carries nothing


def test_sequence_classifier_logits_match_megabert(exported):
    from transformers import AutoModelForSequenceClassification

    _, classifier, _, classifier_hf, cfg = exported
    hf = AutoModelForSequenceClassification.from_pretrained(classifier_hf, trust_remote_code=True).eval()
    assert hf.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    for backend in BACKENDS:
        ours = MosaicBertForSequenceClassification.from_pretrained(classifier, attention_backend=backend).eval()
        for name, (ids, mask, types) in each_batch(cfg):
            with torch.no_grad():
                expected = ours(ids, mask, types).logits  # [B, num_labels]
                got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, msg=f"{backend}, {name}")


def test_token_classifier_applies_its_head_to_megabert_hidden_states(exported):
    """megabert has no token classifier: the head is new, the states it classifies must be megabert's."""
    from transformers import AutoModelForTokenClassification

    mlm, _, mlm_hf, _, cfg = exported
    hf = AutoModelForTokenClassification.from_pretrained(mlm_hf, trust_remote_code=True, num_labels=5).eval()
    ours = MosaicBertModel.from_pretrained(mlm, attention_backend="eager").eval()
    for name, (ids, mask, types) in each_batch(cfg):
        with torch.no_grad():
            hidden, layout = ours(ids, mask, types)
            expected = F.linear(layout.to_padded(hidden), hf.classifier.weight, hf.classifier.bias)
            got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # [B, S, 5]
        real = real_tokens(mask, ids)
        torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL, msg=name)


def test_losses_match_megabert(exported):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    mlm, classifier, mlm_hf, classifier_hf, cfg = exported
    ids, mask, types = batches(cfg.vocab_size, False, 0)["mixed_lengths"]
    labels = torch.full_like(ids, -100)
    labels[mask.bool() & (torch.arange(ids.shape[1]) % 3 == 0)] = 7
    with torch.no_grad():
        expected = MosaicBertForMaskedLM.from_pretrained(mlm).eval()(ids, mask, types, labels=labels).loss
        got = AutoModelForMaskedLM.from_pretrained(mlm_hf, trust_remote_code=True).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
        targets = torch.tensor([0, 2, 1, 1])
        expected = MosaicBertForSequenceClassification.from_pretrained(classifier).eval()(
            ids, mask, types, labels=targets).loss
        got = AutoModelForSequenceClassification.from_pretrained(classifier_hf, trust_remote_code=True).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=types, labels=targets).loss
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
