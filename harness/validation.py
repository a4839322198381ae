"""Typed option checking: the helpers every options dataclass uses, at the bottom of the core.

``require`` and ``choice`` raise ``ValueError("key: problem")`` from a dataclass's
``__post_init__``; :func:`typed` merges a config mapping over a dataclass and turns
any problem into a one-line :class:`~harness.errors.ConfigError` naming the full key.
Everything that types options (models, datasets, recipes, backends, scenario kinds)
imports these from here, so no options module depends on the run spec
(:mod:`harness.config` re-exports them for plugins).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import field
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from harness.errors import ConfigError

T = TypeVar("T")


def require(condition: bool, key: str, problem: str) -> None:
    """Raise ``ValueError('<key>: <problem>')`` unless ``condition``; used in ``__post_init__``."""
    if not condition:
        raise ValueError(f"{key}: {problem}")


def choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    """Raise a ``ValueError`` naming ``key`` unless ``value`` is one of ``allowed``."""
    require(value in allowed, key, f"'{value}' is not one of {', '.join(allowed)}")


def cores_bound(default: int = 0) -> Any:
    """A dataclass field for a thread or stream count: preflight clamps a value above the
    cores the run may use to that many, with a warning (:func:`harness.preflight.bound_threads`)."""
    return field(default=default, metadata={"bounded_by": "cores"})


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): ")


def typed(cls: type[T], node: Any, section: str) -> T:
    """Validate ``node`` (a mapping) against dataclass ``cls``; errors name ``section.key``."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node if node is not None else {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        names = _valid_keys(cls, str(key))
        guess = difflib.get_close_matches(str(key).rsplit(".", 1)[-1], names, n=1, cutoff=0.6)
        where = ".".join([section, *str(key).split(".")[:-1]])
        hint = f"did you mean {where}.{guess[0]}? " if guess else ""
        raise ConfigError(f"unknown key '{section}.{key}'", f"{hint}valid keys of {where}: {', '.join(names)}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first = str(exc).splitlines()[0]
        raise ConfigError(f"invalid value for {section}.{key}: {first}", f"give {section}.{key} a value of the right type") from None
    except ValueError as exc:
        message = str(exc)
        match = _KEY_PREFIX.match(message)
        if match:
            key, problem = match.group(1), message[match.end() :]
            raise ConfigError(f"invalid value for {section}.{key}: {problem}", f"override it, e.g. {section}.{key}=<value>") from None
        raise ConfigError(f"invalid {section}: {message}") from None


def _valid_keys(cls: type, key: str) -> list[str]:
    """Field names of the dataclass that ``key`` (``a.b.c``) was looked up in: ``cls`` or
    the nested dataclass its leading parts name."""
    for part in key.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        field_type = getattr(fields.get(part), "default_factory", None)
        if not isinstance(field_type, type) or not dataclasses.is_dataclass(field_type):
            break
        cls = field_type
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
