"""Configuration plumbing shared by every stage.

Each stage module defines one frozen, keyword-only dataclass whose fields are declared with
:func:`option` (default + one-line help). This module turns YAML files and ``--set stage.key=value``
overrides into instances of those dataclasses, validates types and ``Literal`` choices, and
computes the config hash stored in every output file. YAML files only override defaults: a key
that is not a field is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    hashed: bool | Literal["unless_default"] = True,
    used_when: tuple[str, ...] | None = None,
) -> Any:
    """Declare a config field with its default and a one-line help text.

    `hashed=False` marks fields that do not change results (device, workers, progress), so
    changing them never invalidates files on disk. `hashed="unless_default"`: hashed only when
    set to another value than `default` (an option added later whose default reproduces the
    files made before it existed, which stay valid). `used_when=("extractor", "sift")` marks a
    backend setting: it is hashed only while the sibling field ``extractor`` is one of the
    listed values.
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "hashed": hashed, "used_when": used_when}
    )


def backend_settings(factory: Any, field: str, *values: str) -> Any:
    """A nested settings dataclass (e.g. ``patch``) used only while `field` is one of `values`;
    it is left out of the config hash otherwise."""
    return dataclasses.field(default_factory=factory, metadata={"used_when": (field, *values)})


def _is_hashed(f: dataclasses.Field, value: Any) -> bool:
    hashed = f.metadata.get("hashed", True)
    return value != f.default if hashed == "unless_default" else bool(hashed)


def _in_use(config: Any, f: dataclasses.Field) -> bool:
    used_when = f.metadata.get("used_when")
    return used_when is None or getattr(config, used_when[0]) in used_when[1:]


def to_dict(config: Any, *, hashed_only: bool = False) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if hashed_only and not (_is_hashed(f, value) and _in_use(config, f)):
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value, hashed_only=hashed_only)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_hash(config: Any, **extra: Any) -> str:
    """A short, stable hash of the fields of `config` that change results (plus `extra`);
    settings of backends that are not selected are left out."""
    payload = {"config": to_dict(config, hashed_only=True), **extra}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type `tp`, or raise ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            for c in choices:
                if str(c) == value:
                    return c
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: {value!r} is invalid")
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return tuple(coerce(v, item_tp, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value).expanduser()
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a config dataclass."""
    module = __import__(cls.__module__, fromlist=["_"])
    return get_type_hints(cls, globalns=vars(module), localns={"typing": typing})


def override(config: T, updates: dict[str, Any], where: str = "config") -> T:
    """Return a copy of `config` with `updates` (a possibly nested dict) applied and validated."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {updates!r}")
    hints = field_types(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(names))}"
            )
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            changes[key] = override(current, value, f"{where}.{key}")
        else:
            changes[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{where}: {e}") from None


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["stage.key=value", ...]`` into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected stage.key=value, e.g. keypoints.max_keypoints=2048"
            )
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is set both as a value and a section")
        node[parts[-1]] = value
    return nested


PRESETS_DIR = Path(__file__).parent / "configs"
"""YAML presets shipped inside the package (`--config fast`)."""


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(value: str | Path) -> Path:
    """`value` as given when it is a file or has a suffix, else the shipped preset of that name
    (so `--config fast` works from any folder)."""
    path = Path(value)
    if path.is_file() or path.suffix:
        return path
    preset = PRESETS_DIR / f"{value}.yaml"
    return preset if preset.is_file() else path


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file (a mapping of stage names to overrides)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; shipped presets: {', '.join(preset_names())}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of stage names to settings")
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two override dicts (`extra` wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def describe(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field, for CLI help and docs."""
    rows = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, key + "."))
        else:
            rows.append((key, value, f.metadata.get("help", "")))
    return rows
