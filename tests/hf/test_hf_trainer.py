"""Fine-tuning in the Hugging Face ecosystem: the HF Trainer runs sequence classification on the export, and the
fine-tuned model, saved by transformers, imports back into megabert with the same logits."""

import torch

from megabert.hf.export import export_model_dir
from megabert.hf.importers import import_hf
from megabert.model.bert import MosaicBertForSequenceClassification
from tests.hf.helpers import SWITCHES, model_dir

TRAIN = [("the film was brilliant .", 1), ("the soundtrack was terrible .", 0), ("a moving , funny story", 1),
         ("dull and far too long", 0), ("i loved every minute", 1), ("a waste of two hours", 0),
         ("the cast is wonderful", 1), ("nothing works here", 0)]


def test_hf_trainer_runs_three_steps_of_classification_on_the_export(tmp_path, vocab_file):
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    src, _ = model_dir(tmp_path / "mb", vocab_file, **SWITCHES["mosaicbert"])
    export = export_model_dir(src, tmp_path / "hf").directory
    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(export, trust_remote_code=True, num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [{**tokenizer(text), "labels": label} for text, label in TRAIN]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, save_strategy="no", report_to=[], logging_steps=1,
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    assert result.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("bert.encoder.") for k in changed) and "classifier.weight" in changed

    model.eval()
    trainer.save_model(str(tmp_path / "tuned"))  # transformers' own save_pretrained
    import_hf(tmp_path / "tuned", tmp_path / "back")
    back = MosaicBertForSequenceClassification.from_pretrained(tmp_path / "back", attention_backend="eager").eval()
    batch = tokenizer([text for text, _ in TRAIN], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        got = back(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
