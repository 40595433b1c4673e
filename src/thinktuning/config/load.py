"""Building a config: a preset or YAML file, then dotted ``--set`` overrides, each coerced to its declared type.

Unknown names get the nearest valid name in the error; presets may name a ``base`` preset and list only the keys
they change. The result is validated (:mod:`thinktuning.config.checks`) before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.secrets import scrub_tree, strip_userinfo


def preset_names() -> list[str]:
    presets = resources.files("thinktuning.config").joinpath("presets")
    return sorted(p.name[:-5] for p in presets.iterdir() if p.name.endswith(".yaml"))


def load_config(
    config: str | None = None, overrides: list[str] | None = None, **fields: Any
) -> ThinkTuningConfig:
    """Build a config from a preset name or YAML file (default ``cpu-demo``), then dotted overrides.

    ``fields`` are dotted-name overrides given as Python values (used by the CLI for --seed etc.).
    """
    name = config or "cpu-demo"
    data = _read_yaml(name)
    cfg = ThinkTuningConfig()
    _apply_mapping(cfg, data, prefix="")
    if cfg.preset is None and not name.endswith((".yaml", ".yml")):
        cfg.preset = name
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (example: --set rollout.group_size=5)")
        key, raw = item.split("=", 1)
        set_field(cfg, key.strip(), _parse_override(cfg, key.strip(), raw))
    for key, value in fields.items():
        if value is not None:
            set_field(cfg, key, value)
    from thinktuning.config.checks import validate  # it imports this module

    validate(cfg)
    return cfg


def _parse_override(cfg: ThinkTuningConfig, key: str, raw: str) -> Any:
    """YAML-parse a --set value, except for plain text fields, which keep the text exactly as typed
    (``output_dir=2025-01-15`` is a folder name, not a date)."""
    obj: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
        if not dataclasses.is_dataclass(obj):
            break
    else:
        if dataclasses.is_dataclass(obj) and parts[-1] in {f.name for f in dataclasses.fields(obj)}:
            tp = typing.get_type_hints(type(obj))[parts[-1]]
            if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                             and str in typing.get_args(tp) and raw.strip().lower() not in ("null", "none", "~")):
                return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as err:
        if raw.strip().startswith(("[", "{")):  # meant as a YAML list or mapping, but broken: say where
            raise ConfigError(f"--set {key}={raw}: not valid YAML ({_yaml_problem(err)}). Write a list as "
                              f"{key}=[1,2] or {key}=1,2 (quote the whole --set argument in the shell)") from None
        return raw


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what it was parsing and what it found."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    return ": ".join(p for p in parts if p) or str(err).splitlines()[0]


def _read_yaml(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset or YAML file's fields, merged over those of the preset it names as ``base`` (recursively)."""
    data = _read_one_yaml(name)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{name}: base must name a preset or YAML file, got {base!r}")
    if base in (*_seen, name):
        raise ConfigError(f"{name}: its bases form a circle ({' -> '.join((*_seen, name, base))})")
    return _merge(_read_yaml(base, (*_seen, name)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section (a section mapping merges; anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_one_yaml(name: str) -> dict[str, Any]:
    path = Path(name)
    if name.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name!r} not found. Presets: {', '.join(preset_names())}")
        text = path.read_text()
        where = str(path)
    else:
        if name not in preset_names():
            close = difflib.get_close_matches(name, preset_names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config preset {name!r}.{hint} Presets: {', '.join(preset_names())}; or pass a YAML file"
            )
        text = resources.files("thinktuning.config").joinpath("presets").joinpath(f"{name}.yaml").read_text()
        where = f"preset {name}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of config fields, got {type(data).__name__}")
    return data


def _apply_mapping(obj: Any, data: dict[str, Any], prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(obj, str(key), None)):
            _apply_mapping(getattr(obj, key), value, prefix=f"{dotted}.")
        else:
            set_field(obj, str(key), value, _dotted=dotted)


def _all_field_names(obj: Any, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(obj):
        sub = getattr(obj, f.name)
        if dataclasses.is_dataclass(sub):
            names += _all_field_names(sub, f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names


def set_field(root: Any, key: str, value: Any, _dotted: str | None = None) -> None:
    """Set ``a.b.c`` on a (nested) dataclass, coercing and checking the value against the field's type."""
    dotted = _dotted or key
    parts = key.split(".")
    obj = root
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(obj)}
        if part not in names:
            valid = _all_field_names(root)
            close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config field {dotted!r}.{hint} See src/thinktuning/config.py for all fields")
        if i == len(parts) - 1:
            hints = typing.get_type_hints(type(obj))
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{dotted!r} is a section; set its fields, e.g. {dotted}.<field>=value")
            setattr(obj, part, _coerce(value, hints[part], dotted))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is not a section; cannot set {dotted!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _yaml_item(text: str) -> Any:
    """One item of a comma-separated ``--set`` list: its YAML value, or the text itself when it is not YAML (the
    item's type check then names the field and what it accepts)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()


def _coerce(value: Any, tp: Any, dotted: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming the field and what it accepts."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{dotted} must be {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, dotted)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [_yaml_item(v) for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # --set data.levels=1 arrives from YAML as a scalar
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, inner, dotted) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def save_config(cfg: ThinkTuningConfig, path: str | Path) -> None:
    """The resolved config as YAML, every URL without its ``user:pass@`` (``teacher.base_url`` may carry one): a
    run folder is shared and copied, its config must hold no password."""
    Path(path).write_text(yaml.safe_dump(scrub_tree(cfg.to_dict(), strip_userinfo), sort_keys=False))
