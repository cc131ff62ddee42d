"""YAML configs in PLSC's layout, `-o Section.key=value` overrides, and validation.

A schema is plain data: a dict whose leaves are `(kind, default)` pairs, or `(kind, default,
bound)` with a bound on numbers (each number of a list): ">=1", ">0", "[0,1)", "(0,1]"...
Kinds: "int", "float", "bool", "str", "str?" (string or null), "int?" / "float?" / "dict?" (or null), "float2" (a pair such as
"(0.9, 0.999)"), "floats" / "ints" (lists of numbers), "size" (an int or [h, w]; "size?" may be
null), "list" ("list?" may be null), "strs" (a list of strings), "any", or a tuple of allowed strings. A dict of the form `{"*": ...}` accepts
any key. A section given as the string "ops" is a list of one-key dicts (`- CELoss: {weight:
1.0}`) whose names and arguments the code that builds them checks; `{"*ops": {name: schema}}`
is such a list whose names must be keys of the mapping and whose arguments are checked here
against that op's schema (arguments left out keep the op's own defaults).
Validation returns a new dict with defaults filled in and values coerced.
"""
import ast
import math
import os
from typing import Any, Iterable, List, Optional

import yaml

from .errors import UserError, did_you_mean


class ConfigError(UserError):
    """A problem the user fixes in the config file or on the command line."""


# A config is a few hundred values; these bounds stop a crafted one (a YAML alias "billion
# laughs" of 600 bytes expanded to gigabytes, a nesting that overflows the stack) at the door.
MAX_BYTES = 1 << 20  # of a config file or an -o value: PLSC's configs are about 3 KB
MAX_VALUES = 1_000_000
MAX_DEPTH = 64
MAX_QUOTED = 120  # characters of a value quoted in a message
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a 6 MB config in seconds, not minutes


def _quoted(value) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + f"... ({len(text)} characters)"


def read_yaml(text, where: str):
    """Safe YAML with bounds: at most MAX_VALUES values once aliases are expanded, MAX_DEPTH
    levels, and no key twice in one mapping (the last would win silently; usually a typo)."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters; a config is a few kilobytes (at most {MAX_BYTES:,})")
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root, where: str) -> None:
    sizes = {}

    def size(node, depth):
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (line {node.start_mark.line + 1})")
        if id(node) in sizes:  # an alias: counted again, computed once
            return sizes[id(node)]
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ConfigError(f"{where}:{key.start_mark.line + 1}: key {_quoted(key.value)} appears "
                                          f"twice in one mapping (first at line {seen[key.value]}); remove one")
                    seen[key.value] = key.start_mark.line + 1
                total += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item, depth + 1)
        if total > MAX_VALUES:
            raise ConfigError(f"{where}: expands to more than {MAX_VALUES:,} values (YAML aliases repeated "
                              f"inside each other?); a config holds a few hundred")
        sizes[id(node)] = total
        return total

    size(root, 0)


def load_config(path: str, overrides: Iterable[str] = (), schema: Optional[dict] = None) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (bundled configs, usable by name: "
                          f"demo.yaml, plsc/DeiT_base_patch16_224_in1k_1n8c_dp_fp32.yaml, ...)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = read_yaml(f.read(), path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a YAML config (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (Global:, Model:, ...)")
    for item in overrides:
        apply_override(cfg, item, schema)
    return validate(cfg, schema, where=path) if schema is not None else cfg


def apply_override(cfg: dict, item: str, schema: Optional[dict] = None) -> None:
    """Set `A.b.c=value` in `cfg`; list elements are addressed by index (`ops.1.size=32`)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {_quoted(item)} must look like Section.key=value")
    try:
        value = read_yaml(text, f"override {_quoted(item)}") if text.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {_quoted(item)}: the value is not valid YAML ({problem}); "
                          f"quote it to pass a string: -o '{key}=\"...\"'") from None
    parts = key.split(".")
    node, node_schema = cfg, schema
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        in_op_list = isinstance(node_schema, dict) and "*ops" in node_schema
        if isinstance(node_schema, dict) and not in_op_list and "*" not in node_schema and part not in node_schema:
            raise ConfigError(f"unknown key {path!r} in override {_quoted(item)}{_suggest(part, node_schema)}")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{path!r}: {parts[depth - 1]} has {len(node)} entries; "
                                  f"address one by index 0..{len(node) - 1}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:depth])} is not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
            if in_op_list:
                node_schema = node_schema["*ops"]  # the entry: op name -> its arguments' schema
            elif isinstance(node_schema, dict):
                node_schema = node_schema.get(part, node_schema.get("*"))
            else:
                node_schema = None


def validate(cfg: Any, schema: Any, where: str = "config", path: str = "") -> Any:
    if isinstance(schema, tuple):
        value = _coerce(cfg, schema[0], f"{where}: {path}")
        if len(schema) > 2 and value is not None:
            _check_bound(value, schema[2], f"{where}: {path}")
        return value
    if schema == "ops":
        return _validate_ops(cfg, where, path)
    if isinstance(schema, dict) and "*ops" in schema:
        return _validate_ops(cfg, where, path, schema["*ops"])
    if isinstance(schema, dict):
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: {path or 'top level'} must be a section (a mapping), "
                              f"got {type(cfg).__name__}")
        if "*" in schema:
            return {k: validate(v, schema["*"], where, _join(path, k)) for k, v in cfg.items()}
        for key in cfg:
            if key not in schema:
                raise ConfigError(f"{where}: unknown key {_join(path, key)!r}{_suggest(key, schema)}")
        return {key: validate(cfg.get(key, _default(sub)), sub, where, _join(path, key))
                for key, sub in schema.items()}
    raise TypeError(f"bad schema node at {path!r}: {schema!r}")


def _default(sub):
    return sub[1] if isinstance(sub, tuple) else ([] if sub == "ops" else None)


def _validate_ops(cfg, where, path, op_schemas: Optional[dict] = None) -> List[dict]:
    if cfg is None:
        return []
    if not isinstance(cfg, list):
        raise ConfigError(f"{where}: {path} must be a list of `- Name: {{kwargs}}` entries")
    out = []
    for i, entry in enumerate(cfg):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{where}: {_join(path, i)} must be one `Name: {{kwargs}}` mapping, got {_quoted(entry)}")
        (name, kwargs), = entry.items()
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: {_join(path, i)}.{name}: arguments must be a mapping, got {_quoted(kwargs)}")
        kwargs = dict(kwargs or {})
        if op_schemas is not None:
            if name not in op_schemas:
                raise ConfigError(f"{where}: {_join(path, i)}: unknown op {_quoted(name)}{_suggest(str(name), op_schemas)}; "
                                  f"known: {', '.join(sorted(op_schemas))}")
            kwargs = _validate_given(kwargs, op_schemas[name], where, _join(_join(path, i), name))
        out.append({name: kwargs})
    return out


def _validate_given(cfg: dict, schema: dict, where: str, path: str) -> dict:
    """Like validate() for a mapping, but keys left out stay out (the op's defaults apply)."""
    for key in cfg:
        if key not in schema:
            raise ConfigError(f"{where}: unknown key {_join(path, key)!r}{_suggest(key, schema)}; "
                              f"known: {', '.join(sorted(schema))}")
    return {key: validate(value, schema[key], where, _join(path, key)) for key, value in cfg.items()}


def _coerce(value, kind, label):
    if kind == "any" or (value is None and kind in ("str?", "any")):
        return value
    if value is None and kind in ("int?", "float?", "dict?", "bool?", "floats?"):
        return None
    try:
        if kind in ("int", "int?"):
            return _as_int(value)
        if kind in ("float", "float?"):
            return _as_float(value)
        if kind == "dict?":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError
            return value
        if kind in ("bool", "bool?"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in ("str", "str?"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if kind == "float2":
            pair = ast.literal_eval(value) if isinstance(value, str) else value
            if len(pair) != 2:
                raise ValueError
            return [_as_float(v) for v in pair]
        if kind == "strs":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return value
        if kind in ("list", "list?"):
            if value is None and kind == "list?":
                return None
            if not isinstance(value, list):
                raise ValueError
            return value
        if kind in ("floats", "floats?", "ints"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError
            return [_as_float(v) if kind != "ints" else _as_int(v) for v in value]
        if kind in ("size", "size?"):
            if value is None and kind == "size?":
                return None
            if isinstance(value, (list, tuple)):
                if len(value) != 2:
                    raise ValueError
                return [_as_int(v) for v in value]
            return _as_int(value)
        if isinstance(kind, tuple):
            if value is False and "off" in kind:  # YAML 1.1 reads a bare `off` as false
                return "off"
            if value is True and "on" in kind:  # and a bare `on` as true
                return "on"
            if value not in kind:
                raise ConfigError(f"{label} must be one of {', '.join(map(str, kind))}; got {_quoted(value)}"
                                  f"{_suggest(str(value), kind)}")
            return value
    except (ValueError, TypeError, SyntaxError, ZeroDivisionError, OverflowError):
        wanted = {"int": "an integer", "float": "a finite number", "bool": "true or false", "bool?": "true, false or null",
                  "int?": "an integer or null", "float?": "a finite number or null",
                  "dict?": "a mapping of names to values, or null",
                  "str": "a string", "str?": "a string or null", "float2": "a pair like (0.9, 0.999)",
                  "list": "a list", "list?": "a list or null", "strs": "a list of strings", "floats": "a list of numbers", "floats?": "a list of numbers or null", "ints": "a list of integers",
                  "size": "an integer or [height, width]",
                  "size?": "an integer, [height, width] or null"}[kind]
        raise ConfigError(f"{label} must be {wanted}, got {_quoted(value)}") from None
    raise TypeError(f"unknown schema kind {kind!r}")


def _as_int(value) -> int:
    """An int, or a float with an integral value (YAML reads `1e3` as a float); else ValueError."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ValueError
    return int(value)


def _as_float(value) -> float:
    """A finite number, also written as PLSC's "1.0/255.0" or YAML 1.1's "1e-3"; else ValueError."""
    if isinstance(value, bool):
        raise ValueError
    number = float(_number(value))
    if not math.isfinite(number):
        raise ValueError
    return number


def _check_bound(value, bound: str, label: str) -> None:
    """`bound` is ">=N", ">N" or an interval such as "[0,1)"; lists are checked per number."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if bound.startswith(">"):
        strict = not bound.startswith(">=")
        low, high, low_open, high_open = float(bound.lstrip(">=")), None, strict, False
        text = f"{'>' if strict else '>='} {_shown(low)}"
    else:
        low_text, high_text = bound[1:-1].split(",")
        low, high, low_open, high_open = float(low_text), float(high_text), bound[0] == "(", bound[-1] == ")"
        text = f"in {bound}"
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if number < low or (low_open and number == low) or \
                (high is not None and (number > high or (high_open and number == high))):
            raise ConfigError(f"{label} must be {text}, got {_quoted(value)}")


def _shown(x: float):
    return int(x) if x.is_integer() else x


def _number(value):
    """YAML 1.1 reads `1e-3` as a string and PLSC writes `1.0/255.0`: accept both."""
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _suggest(key: str, options) -> str:
    return did_you_mean(key, [o for o in options if o != "*"])


def differences(old: Any, new: Any, path: str = "") -> List[tuple]:
    """Every leaf that differs between two configs, as `(dotted.key, old, new)`; list entries
    are addressed by index when both lists have the same length, as in `-o` overrides."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(key), new.get(key), _join(path, key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, _join(path, i))]
    return [] if old == new else [(path, old, new)]
