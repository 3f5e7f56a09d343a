"""The single-device MosaicBERT model; loads on first use so importing a submodule stays cheap.

    from megabert.model import MosaicBertForMaskedLM
    model = MosaicBertForMaskedLM.from_pretrained("runs/base/model")
"""

from __future__ import annotations

from megabert.utils.lazy import lazy_attributes

_PUBLIC = {
    "MosaicBertModel": "megabert.model.bert",
    "MosaicBertForMaskedLM": "megabert.model.bert",
    "MosaicBertForSequenceClassification": "megabert.model.bert",
}
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
