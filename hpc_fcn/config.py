"""YAML configs with dotted ``key=value`` overrides, validated strictly into typed dataclasses.

Every section is a dataclass; its fields' annotations are the schema, and each field's comment in the
source (on its line, or the comment lines just above it) is the key's documentation (:func:`key_doc`),
which ``--print-config`` prints beside the key. Unknown keys, wrong types and
impossible values raise :class:`ConfigError` naming the dotted key. ``validate()`` methods on a
section check values that types cannot (they raise ``ConfigError`` via :func:`fail`).

A file may start from other files: ``include: [relative/path.yaml, ...]`` (paths relative to the including
file) are read in order and merged, then the file's own keys are merged on top, then the overrides; the
merged data is validated as one config (see :func:`read_config_data`).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, reported as one line that names the key."""


def fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"config key '{key}': {message}")


_DURATION = re.compile(r"^\s*(\d+)\s*([dh])\s*$")


def duration_hours(text: Any) -> int | None:
    """A duration written as '5d' or '120h', in hours; None when ``text`` is not one."""
    m = _DURATION.match(str(text))
    return None if m is None else int(m.group(1)) * (24 if m.group(2) == "d" else 1)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers (``1e-3`` is a float, not the string YAML 1.1 makes of it)
    and, as in YAML 1.2, no timestamps: ``2005-01-01`` stays text, which the schema checks and names."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] not in ("tag:yaml.org,2002:float",
                                                                    "tag:yaml.org,2002:timestamp")]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
                      |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text (YAML 1.2 numbers)."""
    return yaml.load(text, Loader=_Loader)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to annotation ``tp`` or fail naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            fail(key, f"expected a mapping (section), got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        errors = []
        for a in sorted(args, key=lambda a: a is str):  # try str last so "2" does not stay a string
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        fail(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        fail(key, f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        fail(key, f"expected null, got {value!r}")
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            fail(key, f"expected a list ({_type_name(tp)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                fail(key, f"expected {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            fail(key, f"expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):  # 1e-3 read by a YAML 1.1 loader
            value = load_yaml(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                fail(key, f"must be a finite number, got {value!r}")
            return float(value)
        fail(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        fail(key, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        full = f"{prefix}.{k}" if prefix else str(k)
        removed = getattr(cls, "REMOVED_KEYS", {}).get(k)  # a key of earlier releases: say what replaced it
        if removed:
            raise ConfigError(f"config key '{full}': {removed}")
        import difflib
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(fields)})"
        raise ConfigError(f"config key '{full}': unknown key{hint}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    obj = cls(**kwargs)
    object.__setattr__(obj, "_given", frozenset(kwargs))  # the keys set explicitly (see given_keys)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def given_keys(section: Any) -> frozenset[str]:
    """The keys of a config section that the YAML file or an override set (not left at their defaults)."""
    return getattr(section, "_given", frozenset())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (for example parallel.h=2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"config key '{'.'.join(path[:i + 1])}' is a value, not a section: cannot set '{'.'.join(path)}'")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = "; ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise ConfigError(f"config file {path}{where}: not valid YAML ({what or str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def from_dict(cls: type[T], data: Mapping[str, Any], overrides: Sequence[str] = ()) -> T:
    return _build(cls, apply_overrides(copy.deepcopy(dict(data)), overrides))


INCLUDE = "include"


def merge(base: dict, top: Mapping) -> dict:
    """``top`` merged onto ``base`` (in place): sections merge key by key, anything else is replaced."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def read_config_data(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The data of config file ``path`` with its ``include`` files merged under its own keys (recursively).

    Each included file is a fragment: any part of a config, read with its own includes first. A missing
    file, a cycle or a badly formed ``include`` is a one-line :class:`ConfigError` naming the key.
    """
    path = Path(path)
    data = read_yaml(path)
    if INCLUDE not in data:
        return data
    where = f"config key '{INCLUDE}' in {path}"
    given = data.pop(INCLUDE)
    paths = [given] if isinstance(given, str) else given
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f"{where}: expected a list of file paths (relative to {path.parent}), got {given!r}")
    merged: dict = {}
    me = path.resolve()
    for i, rel in enumerate(paths):
        key = where if isinstance(given, str) else f"config key '{INCLUDE}[{i}]' in {path}"
        target = (path.parent / Path(rel).expanduser()).resolve()
        if not target.is_file():
            raise ConfigError(f"{key}: {target} does not exist (paths are relative to the including file)")
        if target in _chain + (me,):
            raise ConfigError(f"{key}: {rel} includes itself (cycle: "
                              f"{' -> '.join(p.name for p in _chain + (me, target))})")
        merge(merged, read_config_data(target, _chain + (me,)))
    return merge(merged, data)


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read YAML ``path`` (or start from defaults when None) with its includes, apply overrides, validate into ``cls``."""
    data = read_config_data(path) if path is not None else {}
    cfg = from_dict(cls, data, overrides)
    if path is not None and hasattr(cfg, "_source"):
        object.__setattr__(cfg, "_source", str(path))
    return cfg


def to_dict(cfg: Any) -> Any:
    """Plain YAML-able data of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_resolved(cfg: Any, directory: str | Path, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config beside an output, so every result says how it was made."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / name
    out.write_text(dump_yaml(cfg))
    return out


# ---- the keys' documentation: each field's comment in the schema's source --------------------------

@functools.lru_cache(maxsize=None)
def _field_comments(cls: type) -> dict[str, str]:
    """The comment of each field declared in ``cls`` itself: the comment on the field's line(s), else the
    block of comment lines just above it (joined into one line); {} when the source cannot be read."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT
                and not tok.string.lstrip("#").strip().startswith(("noqa", "type:"))}  # linters' marks: no docs
    out = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        if not text:
            n = node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                text[:0] = [comments[n]] if n in comments else []
                n -= 1
        if text:
            out[node.target.id] = " ".join(text)
    return out


def _section_of(tp: Any) -> type | None:
    """The section class a field holds: ``tp`` itself, or the values of ``dict[str, Section]``."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (dict, Mapping) and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1]
    return None


def key_doc(cls: type, name: str) -> str:
    """The documentation of key ``name`` of section ``cls``: its comment in the schema's source, else (for a
    section) the first line of the section's docstring; '' when it has none (tests/test_cli_config.py fails then)."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            doc = _field_comments(klass).get(name)
            if doc:
                return doc
            break
    section = _section_of(typing.get_type_hints(cls)[name])
    if section is not None and section.__doc__ and not section.__doc__.startswith(f"{section.__name__}("):
        return section.__doc__.strip().splitlines()[0]
    return ""


def schema_keys(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of the schema ``cls`` as (dotted key, documentation); the entries of a ``dict[str, Section]``
    key appear as ``key.<name>.field``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append((key, key_doc(cls, f.name)))
        section = _section_of(hints[f.name])
        if section is not None:
            inner = f"{key}." if dataclasses.is_dataclass(hints[f.name]) else f"{key}.<name>."
            out.extend(schema_keys(section, inner))
    return out


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def documented_yaml(cfg: Any) -> str:
    """The config ``cfg`` as YAML, each key under a one-line comment: its documentation (:func:`key_doc`).
    It reads back as the same config."""
    lines: list[str] = []

    def emit(section: Any, depth: int) -> None:
        pad = "  " * depth
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            lines.append(f"{pad}# {key_doc(type(section), f.name)}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, depth + 1)
            elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
                lines.append(f"{pad}{f.name}:")
                for name, entry in value.items():
                    lines.append(f"{pad}  {_flow(name)}:")
                    emit(entry, depth + 2)
            else:
                lines.append(f"{pad}{f.name}: {_flow(to_dict(value))}")

    emit(cfg, 0)
    return "\n".join(lines) + "\n"
