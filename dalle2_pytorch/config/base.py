"""Strict pydantic base model and shared field types for every config.

Every config inherits :class:`StrictModel`:

* unknown keys are errors, and the message names the bad key and the nearest valid key
  (``difflib``), e.g. ``unknown key 'dimm' in UnetConfig (nearest valid key: 'dim')``;
* keys that the reference once had and later dropped are listed per model in ``_legacy_keys``:
  they are accepted with a :class:`LegacyConfigKeyWarning` and ignored;
* keys that the reference (or LAION's configs) spelled differently are listed in
  ``_renamed_keys``: their value moves to the current key, with a warning;
* defaults are validated too (``validate_default=True``), so a bad default cannot hide.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from dalle2_pytorch._helpers import LegacyConfigKeyWarning  # defined low so models can warn with it too

__all__ = [
    "LegacyConfigKeyWarning",
    "StrictModel",
    "PositiveInt",
    "NonNegativeInt",
    "PositiveFloat",
    "NonNegativeFloat",
    "Probability",
    "Layout",
    "LossType",
    "BetaSchedule",
    "SamplerName",
    "constructor_kwargs",
    "is_local_path",
    "check_paths_exist",
    "load_json",
]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Layout = Literal["1.15.6", "1.1.0"]
LossType = Literal["l1", "l2", "huber"]
BetaSchedule = Literal["cosine", "linear", "quadratic", "jsd", "sigmoid"]


def _check_sampler_name(value: str) -> str:
    from dalle2_pytorch.diffusion import parse_sampler

    parse_sampler(value)  # ValueError listing the registered names / spacings
    return value


SamplerName = Annotated[str, AfterValidator(_check_sampler_name)]
"""A sampler spec: a registry name (`dalle2_pytorch.diffusion.sampler_names()`), optionally with a
spacing after a colon (`dpmpp_2m:trailing`, `euler:karras`)."""


# Common spellings that are not field names, mapped to the field they most likely mean. They only
# improve the "nearest valid key" hint; they are never accepted as keys.
_KEY_SYNONYMS: dict[str, str] = {
    "learning_rate": "lr",
    "weight_decay": "wd",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "seed": "random_seed",
    "grad_clip": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm",
    "gradient_clipping": "max_grad_norm",
    "ema_decay": "ema_beta",
    "warmup": "warmup_steps",
    "num_heads": "heads",
    "n_heads": "heads",
    "num_layers": "depth",
    "n_layers": "depth",
    "embed_dim": "image_embed_dim",
    "num_steps": "timesteps",
}

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def nearest_key(key: str, valid: Iterable[str]) -> str:
    """Returns the valid key closest to `key` (difflib ratio; synonyms count as their target)."""
    valid = list(valid)
    candidates: dict[str, str] = {name: name for name in valid}
    for synonym, target in _KEY_SYNONYMS.items():
        if target in candidates and synonym not in candidates:
            candidates[synonym] = target
    lowered = key.lower()
    best = max(
        candidates,
        key=lambda name: (difflib.SequenceMatcher(None, lowered, name.lower()).ratio(), -len(name)),
    )
    return candidates[best]


class StrictModel(BaseModel):
    """Base of every config: forbids unknown keys, handles legacy / renamed keys."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )

    # key -> why it is ignored (keys the reference had once and dropped)
    _legacy_keys: ClassVar[Mapping[str, str]] = {}
    # old key -> current key (value is moved)
    _renamed_keys: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _screen_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        out = dict(data)
        unknown: list[str] = []
        for key in list(out):
            if key in fields:
                continue
            if key in cls._renamed_keys:
                new = cls._renamed_keys[key]
                value = out.pop(key)
                if out.get(new) is not None:
                    _warn(f"{cls.__name__}: ignoring legacy key {key!r} because {new!r} is also given")
                else:
                    out[new] = value
                    _warn(f"{cls.__name__}: legacy key {key!r} is now called {new!r}; please rename it")
            elif key in cls._legacy_keys:
                out.pop(key)
                _warn(f"{cls.__name__}: ignoring legacy key {key!r} ({cls._legacy_keys[key]})")
            else:
                unknown.append(str(key))
        if unknown:
            parts = [
                f"unknown key {key!r} in {cls.__name__} (nearest valid key: {nearest_key(key, fields)!r})"
                for key in unknown
            ]
            raise PydanticCustomError("extra_forbidden", "{message}", {"message": "; ".join(parts)})
        return out


def constructor_kwargs(model: BaseModel, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword arguments for a constructor: every field except `exclude`, skipping None values.

    Field defaults equal the constructor defaults, so leaving out None (which is always the
    constructor default for these fields) builds exactly the configured module.
    """
    skip = set(exclude)
    return {
        name: getattr(model, name)
        for name in type(model).model_fields
        if name not in skip and getattr(model, name) is not None
    }


def _warn(message: str) -> None:
    warnings.warn(message, LegacyConfigKeyWarning, stacklevel=4)


def is_local_path(value: str | None) -> bool:
    """True for a plain filesystem path: not None/empty, no `{}` template, no `pipe:`, no URL scheme."""
    if not value:
        return False
    if "{" in value or "}" in value:
        return False
    if value.startswith("pipe:"):
        return False
    return _URL_SCHEME.match(value) is None


def check_paths_exist(items: Iterable[tuple[str, str | None]]) -> None:
    """Raises FileNotFoundError listing every (field, path) pair whose local path does not exist.

    Non-local values (URLs, `pipe:` commands, `{}` shard templates, None) are skipped.
    """
    missing = [
        f"{field} = {path!r}" for field, path in items if is_local_path(path) and not Path(path).exists()
    ]
    if missing:
        raise FileNotFoundError("these config paths do not exist: " + "; ".join(missing))


def load_json(path: str | Path) -> dict:
    """Reads a JSON object from `path`, naming the file in any parse error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data
