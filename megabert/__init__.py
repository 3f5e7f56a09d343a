"""megabert: pretrain MosaicBERT encoders fast; use them in PyTorch, transformers and sentence-transformers.

    from megabert import MosaicBertForMaskedLM, ModelConfig
    model = MosaicBertForMaskedLM.from_pretrained("runs/base/model")

The names below load on first use, so `import megabert` stays cheap (no torch until a model class is touched).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "ModelConfig": "megabert.config",
    "MosaicBertModel": "megabert.model.bert",
    "MosaicBertForMaskedLM": "megabert.model.bert",
    "MosaicBertForSequenceClassification": "megabert.model.bert",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'megabert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
