"""Optional dependencies: one clear line naming the extra to install when one is missing.

The base install (`pip install dalle2-pytorch`) loads models and samples; training, the demo, the
web page, the Hub and some CLIP backbones need extras (see setup.py): `[clip]`, `[hub]`, `[train]`, `[demo]`,
`[web]`, `[vqgan]`, `[all]`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["MissingExtraError", "import_optional", "require_extra"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def _message(what: str, module: str, extra: str) -> str:
    return (
        f"{what} needs the optional package '{module}', which is not installed: "
        f"pip install 'dalle2-pytorch[{extra}]'"
    )


def require_extra(extra: str, *modules: str, what: str | None = None) -> None:
    """Raises :class:`MissingExtraError` unless every module in `modules` can be imported."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(_message(what or f"this part of dalle2_pytorch ({extra})", module, extra))


def import_optional(module: str, extra: str, what: str | None = None) -> ModuleType:
    """`importlib.import_module(module)`, or :class:`MissingExtraError` naming `extra`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == module.split(".")[0]:
            raise MissingExtraError(_message(what or module, module, extra)) from None
        raise
