"""The single-device MosaicBERT model; loads on first use so importing a submodule stays cheap.

    from megabert.model import MosaicBertForMaskedLM
    model = MosaicBertForMaskedLM.from_pretrained("runs/base/model")
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "MosaicBertModel": "megabert.model.bert",
    "MosaicBertForMaskedLM": "megabert.model.bert",
    "MosaicBertForSequenceClassification": "megabert.model.bert",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'megabert.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
