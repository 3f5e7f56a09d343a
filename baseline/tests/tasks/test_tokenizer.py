"""Sentence-pair framing on megabert.data's tokenizer: [CLS] a [SEP] b [SEP], types, longest-first truncation."""

import pytest

from megabert.model.pretrained import TokenizerError, attach_tokenizer
from megabert.tasks.tokenizer import PairEncoder, load_tokenizer
from tests.tasks.tiny_model import make_model_dir


class FakeTokenizer:
    cls_id, sep_id = 101, 102

    def encode_batch(self, texts):
        return [[int(w) for w in t.split()] for t in texts]


def test_pair_framing_and_token_types():
    ids, types = PairEncoder(FakeTokenizer(), 16).encode(["1 2 3"], ["7 8"])
    assert ids == [[101, 1, 2, 3, 102, 7, 8, 102]] and types == [[0, 0, 0, 0, 0, 1, 1, 1]]
    ids, types = PairEncoder(FakeTokenizer(), 16).encode(["1 2"], None)
    assert ids == [[101, 1, 2, 102]] and types == [[0, 0, 0, 0]]


@pytest.mark.parametrize("la,lb", [(10, 2), (2, 10), (5, 5), (6, 5), (20, 20), (1, 30)])
def test_truncation_matches_longest_first_token_by_token(la, lb):
    a, b, budget = list(range(la)), list(range(100, 100 + lb)), 9
    ka, kb = list(a), list(b)
    while len(ka) + len(kb) > budget:  # Hugging Face's rule: the longer loses a token, b on ties
        (ka if len(ka) > len(kb) else kb).pop()
    assert PairEncoder._truncate(a, b, budget) == (ka, kb)


def test_model_dir_tokenizer_round_trip(tmp_path, vocab_file):
    model_dir = make_model_dir(tmp_path / "m", vocab_file)
    encoder = load_tokenizer(model_dir, seq_len=8)
    ids, types = encoder.encode(["the film was wonderful and brilliant and superb"], ["the actor"])
    assert len(ids[0]) == 8 and ids[0][0] == encoder.tokenizer.cls_id and ids[0][-1] == encoder.tokenizer.sep_id
    assert types[0].count(1) >= 2
    with pytest.raises(TokenizerError, match="needs vocab_file pointing at an existing file"):
        attach_tokenizer(model_dir, "BertWordPieceLowerCase", vocab_file=str(tmp_path / "missing.txt"))


def test_model_exported_by_the_trainer_finds_its_run_tokenizer_and_length(tmp_path, vocab_file):
    """megabert.train.export records source_checkpoint; its config.json (the TrainConfig) names the tokenizer."""
    import json

    from megabert.model.pretrained import load_state_dict, save_pretrained, load_model_config
    from megabert.model.bert import MosaicBertForMaskedLM
    from megabert.tasks.finetune import _pretraining_seq_len
    from megabert.tasks.tokenizer import resolve_tokenizer

    source = make_model_dir(tmp_path / "attached", vocab_file)
    checkpoint = tmp_path / "checkpoints" / "step_0000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text(json.dumps(
        {"data": {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": str(vocab_file), "seq_len": 128}}))
    cfg = load_model_config(source)
    model = MosaicBertForMaskedLM(cfg)
    model.load_state_dict(load_state_dict(source))
    exported = save_pretrained(model, tmp_path / "exported", cfg, extra={"source_checkpoint": str(checkpoint),
                                                                        "step": 10})
    assert resolve_tokenizer(exported)["vocab_file"] == str(vocab_file)
    assert load_tokenizer(exported, 16).encode(["the film"], None)[0][0][0] == 2  # [CLS] id in the test vocab
    assert _pretraining_seq_len(exported) == 128
