"""megabert: pretrain MosaicBERT encoders fast; use them in PyTorch, transformers and sentence-transformers.

    from megabert import MosaicBertForMaskedLM, ModelConfig
    model = MosaicBertForMaskedLM.from_pretrained("runs/base/model")

The names below load on first use, so `import megabert` stays cheap (no torch until a model class is touched).
"""

from __future__ import annotations

from megabert.utils.lazy import lazy_attributes

_PUBLIC = {
    "ModelConfig": "megabert.config",
    "MosaicBertModel": "megabert.model.bert",
    "MosaicBertForMaskedLM": "megabert.model.bert",
    "MosaicBertForSequenceClassification": "megabert.model.bert",
}
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
