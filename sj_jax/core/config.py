"""One config system: frozen dataclasses, filled from YAML files and `key=value` overrides.

Every config class in sj_jax is a (nested) dataclass. `from_dict` validates a mapping against it and
raises `ConfigError` naming the bad key (`mesh.tensr: unknown key; known: data, fsdp, tensor`) or the
bad value, so a typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sj_jax.core.distributed import DistributedConfig
from sj_jax.core.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML as 1.2 reads it: only true/false are booleans, so `cache_dir: off` is the string "off"
    (YAML 1.1, PyYAML's default, turns off/on/yes/no into booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def read_yaml(text: str) -> Any:
    """Parses config text (YAML 1.2 booleans; see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotation `tp` (after `from __future__` resolution) and converts."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            elem = args[0] if args else Any
            items = [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; learning rates are written that way.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Runtime:
    """The keys every command's config shares, defined once here: each command's config is a `Runtime`."""

    dtype: typing.Literal["float32", "bfloat16"] = "float32"  # compute dtype
    cache_dir: str | None = "auto"  # compiled executables and dequantised weights; "off" = none (sj_jax.core.cache)
    # float32 matmuls, for the whole process: "default" keeps JAX's setting ($JAX_DEFAULT_MATMUL_PRECISION,
    # else the backend's choice: TF32 on NVIDIA GPUs, bfloat16 passes on TPUs, full float32 on CPUs);
    # "high" (bf16_3x) and "highest" (full float32) ask for more. Saved in each run's config.yaml.
    matmul_precision: typing.Literal["default", "high", "highest"] = "default"
    distributed: DistributedConfig = DistributedConfig()  # several processes (sj_jax.core.distributed)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "", base: Any = None) -> T:
    """Builds the dataclass `cls` from `data`, naming any unknown, missing or ill-typed key. Keys
    `data` leaves out take their value from `base` (an instance of `cls`), else the field's default;
    a section given in part keeps the rest of its default *instance* (a config whose default
    `optim` is `OptimConfig(schedule="constant")` keeps that schedule when `optim.learning_rate` is set)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; known: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        default = getattr(base, name) if base is not None else f.default
        if name in data:
            value = data[name]
            if dataclasses.is_dataclass(default) and isinstance(value, dict):
                kwargs[name] = from_dict(type(default), value, f"{prefix}{name}", default)
            else:
                kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
        elif base is not None:
            kwargs[name] = default
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # A class's own validation names its field ("format: ..."); put it under this key. Messages
        # that already name the full key are left as they are.
        if where and not str(e).startswith(where):
            raise ConfigError(f"{where}.{e}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def field_at(cfg: Any, key: str) -> Any:
    """The value at a dotted key: `field_at(train_cfg, "data.train_file")`."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_fields(cfg: T, values: dict[str, Any]) -> T:
    """`cfg` with the values at dotted keys replaced: `with_fields(c, {"data.train_file": f, "seed": 1})`."""
    top: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        top[head] = with_fields(top.get(head, getattr(cfg, head)), {rest: value}) if rest else value
    return dataclasses.replace(cfg, **top)


def as_base(cfg: Any, cls: type[T]) -> T:
    """The `cls` (a dataclass) that `cfg`, an instance of a subclass of `cls`, extends: its fields of `cls` only."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.init})


def check_owned(cfg: Any, where: str, default: Any, keys: tuple[str, ...], owner: str) -> None:
    """A config composed into another holds keys its owner sets itself (a stage's model, output
    folder, seed): each of `keys` must keep its value in `default`, else a value the user wrote
    would be silently replaced. Raises a ConfigError naming `where.key` and `owner`."""
    for key in keys:
        if field_at(cfg, key) != field_at(default, key):
            raise ConfigError(f"{where}.{key}: set by {owner}, not here; leave it out")


def to_dict(obj: Any) -> Any:
    """The inverse of `from_dict`: plain dicts, lists and scalars, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` strings (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = read_yaml(raw)
    return data


def load_yaml(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Reads a YAML file (or nothing) into `cls`, applies overrides, validates; errors name the file."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = read_yaml(path.read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: config file not found") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    apply_overrides(data, list(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
