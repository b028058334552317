"""Typed settings read from environment variables (pydantic-settings): each default written once.

A settings class (:class:`EnvSettings`) declares every field once: its type, its default, its range and,
in its ``Annotated`` metadata, the variable(s) that set it (:class:`Env`)::

    class CacheSettings(EnvSettings):
        ttl_s: Annotated[int, Env("CASS_CACHE_TTL_S"), Field(ge=1)] = DEFAULT_TTL_S

* ``CacheSettings()`` is the defaults (no environment is read), ``CacheSettings(ttl_s=60)`` a variant
  (validated the same way), ``settings.model_copy(update=...)`` a copy; instances are frozen;
* ``CacheSettings.from_env(env)`` reads a mapping (default ``os.environ``) through :class:`EnvSource`:
  surrounding blanks are stripped and a blank value counts as unset; a field without :class:`Env` whose
  type has :class:`Env` fields itself (a *section*: a model or a pydantic dataclass) is read from the
  same mapping;
* a value that does not validate raises ``cls.error`` (a :class:`SettingsError`, a ValueError) with one
  line naming the variable and the value, e.g. ``CASS_CACHE_TTL_S = 'soon' is not an integer``. The
  value of a ``repr=False`` field (a secret) is never shown.

Environment text is parsed by the field's type and validators (``"2"`` -> 2, :data:`Flag` for
booleans); a field whose variable has another unit than the field (MB -> bytes) converts text in
:func:`scaled`, so Python callers pass bytes and the environment says megabytes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Mapping
from urllib.parse import urlsplit

from pydantic import BeforeValidator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SettingsError(ValueError):
    """A setting with a value the program cannot use; the message names its variable.

    Raised inside a validator, its message is taken as the whole message (pairing rules and the like)."""


@dataclass(frozen=True, init=False)
class Env:
    """The environment variable(s) that set a field: the first of ``names`` that is set wins, or with
    ``combine`` all of them together, as ``{name: text}`` of those set (for a value made of several)."""

    names: tuple[str, ...]
    combine: bool = False

    def __init__(self, *names: str, combine: bool = False):
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "combine", combine)

    def read(self, env: Mapping[str, str]) -> tuple[str, Any] | None:
        """``(variable, value)`` from a mapping of stripped, non-blank values; None when unset."""
        if self.combine:
            found = {name: env[name] for name in self.names if name in env}
            return (", ".join(found), found) if found else None
        return next(((name, env[name]) for name in self.names if name in env), None)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError("is not a boolean (use 1/0, true/false)")
    return value


#: a boolean whose text is one of 1/0, true/false, yes/no, on/off (any case)
Flag = Annotated[bool, BeforeValidator(_flag)]


def scaled(unit: float, minimum: float) -> BeforeValidator:
    """A number whose text is in ``unit`` (``scaled(MiB, 0.001)``: megabytes -> bytes), at least
    ``minimum`` of it; a number passed from Python is taken as it is (already in the field's unit)."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            number = float(value)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(number) or number < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return int(number * unit)

    return BeforeValidator(parse)


def _redis_url(value: Any) -> Any:
    if isinstance(value, str) and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL (got scheme {urlsplit(value).scheme!r})")
    return value


#: a Redis URL (redis://, rediss://, unix://); declare it ``repr=False``: it may hold a password
RedisUrl = Annotated[str, BeforeValidator(_redis_url)]


def _fields(cls: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or pydantic dataclass (else none)."""
    return getattr(cls, "model_fields", None) or getattr(cls, "__pydantic_fields__", None) or {}


def env_of(field: FieldInfo) -> Env | None:
    return next((m for m in field.metadata if isinstance(m, Env)), None)


def section_of(field: FieldInfo) -> type | None:
    """The field's type when it is a section (its fields are read from the environment too)."""
    kind = field.annotation
    if env_of(field) is None and isinstance(kind, type) and any(
            env_of(f) or section_of(f) for f in _fields(kind).values()):
        return kind
    return None


def env_variables(cls: type) -> list[str]:
    """Every variable that sets a field of ``cls`` or of its sections, in declaration order."""
    names: list[str] = []
    for field in _fields(cls).values():
        env, section = env_of(field), section_of(field)
        for name in (env.names if env else env_variables(section) if section else ()):
            if name not in names:
                names.append(name)
    return names


class EnvSource(PydanticBaseSettingsSource):
    """The settings of an environment mapping, as ``{field: text}`` (sections nested), remembering where
    each value came from to explain a :class:`ValidationError` (:meth:`explain`)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env = {k: v.strip() for k, v in env.items() if isinstance(v, str) and v.strip()}
        self.origins: dict[tuple, tuple[str, Any, FieldInfo]] = {}  # loc -> (variable, text, field)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        found = env_of(field) and env_of(field).read(self.env)
        return (found[1], found[0], False) if found else (None, field_name, False)

    def __call__(self) -> dict[str, Any]:
        return self._read(self.settings_cls, ())

    def _read(self, cls: type, loc: tuple) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, field in _fields(cls).items():
            section = section_of(field)
            if section is not None:
                nested = self._read(section, loc + (name,))
                if nested:
                    data[name] = nested
                continue
            value, variable, _ = self.get_field_value(field, name)
            if value is not None:
                data[name] = value
                self.origins[loc + (name,)] = (variable, value, field)
        return data

    def explain(self, exc: ValidationError) -> str:
        """One line for the first error: the variable, its value (unless secret) and what is wrong."""
        error = exc.errors()[0]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, SettingsError):
            return str(cause)
        loc = tuple(error["loc"])
        while loc and loc not in self.origins:
            loc = loc[:-1]
        if not loc:
            return f"{'.'.join(map(str, error['loc']))}: {_reason(error, None)}"
        variable, text, field = self.origins[loc]
        if field.repr is False or not isinstance(text, str):
            return f"{variable} {_reason(error, field)}"
        return f"{variable} = {text!r} {_reason(error, field)}"


_REASONS = {"int_parsing": "is not an integer", "int_from_float": "is not an integer",
            "int_type": "is not an integer", "float_parsing": "is not a number", "float_type": "is not a number",
            "bool_parsing": "is not a boolean (use 1/0, true/false)"}


def _reason(error: dict, field: FieldInfo | None) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _REASONS:
        return _REASONS[kind]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "finite_number"):
        bound = ctx.get("ge", next((m.ge for m in (field.metadata if field else ()) if hasattr(m, "ge")), None))
        return f"must be at least {bound:g}" if bound is not None else "is not a finite number"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']:g}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']:g}"
    return error["msg"][:1].lower() + error["msg"][1:]


class EnvSettings(BaseSettings):
    """A frozen settings model: ``Cls()`` defaults, ``Cls.from_env(env)`` from the environment."""

    model_config = SettingsConfigDict(frozen=True, allow_inf_nan=False)
    #: what :meth:`from_env` raises (a subclass names its program's error, e.g. backend's ConfigError)
    error: ClassVar[type[SettingsError]] = SettingsError

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)  # the environment only through from_env (Cls() is the defaults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None):
        """The settings of ``env`` (default ``os.environ``); ``cls.error`` naming a bad variable."""
        source = EnvSource(cls, os.environ if env is None else env)
        try:
            return cls(**source())
        except ValidationError as exc:
            raise cls.error(source.explain(exc)) from None
