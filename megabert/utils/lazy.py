"""Package attributes that import their module on first use, so importing the package itself stays cheap."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, public: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """(__getattr__, __dir__) for `package`, whose names `public` maps to the modules that define them.

        __getattr__, __dir__ = lazy_attributes(__name__, {"MosaicBertModel": "megabert.model.bert"})
    """

    def __getattr__(name: str):
        if name in public:
            return getattr(importlib.import_module(public[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted([*public, *vars(importlib.import_module(package))])

    return __getattr__, __dir__
