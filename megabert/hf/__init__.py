"""megabert models in the Hugging Face ecosystem: export to transformers / sentence-transformers, import back.

    from megabert.hf import export_model_dir, import_hf, import_mosaic
    export_model_dir("runs/base/model", "exported/", sentence_transformers=True)

configuration_megabert.py and modeling_megabert.py are the standalone model code every self-contained export
carries (torch and transformers only); the rest of this package writes and reads export directories. In the
layering it sits above tasks/: the commands call it; it reads model/, data/ (tokenizers) and the model dir's
tokenizer lookup in tasks/tokenizer.py; nothing below imports it.
Names load on first use, so importing this package pulls in neither transformers nor the model.
"""

from __future__ import annotations

from megabert.utils.lazy import lazy_attributes

_PUBLIC = {
    "export_model_dir": "megabert.hf.export",
    "import_hf": "megabert.hf.importers",
    "import_mosaic": "megabert.hf.importers",
    "ConversionError": "megabert.hf.importers",
}
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
