"""Checks of what comes from outside: registered tags and ``config.json`` files.

A ``config.json`` is input (a download, a folder someone edited), so before anything is built it is
checked against the architecture's typed arguments (:class:`ArgSpec`): known keys, types, ranges,
and a parameter count estimated from the arguments (:func:`estimate_params`) against a ceiling, so
a config asking for ``channels [..., 10000000]`` fails in microseconds instead of allocating
46 GB. Every failure is one :class:`~rasd_hub.errors.ConfigValidationError` naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rasd_hub.errors import ConfigValidationError, RasdValueError

__all__ = ["ArgSpec", "check_tag", "check_model_args", "check_config", "MAX_PARAMS",
           "NORMALIZATION_METHODS", "check_normalization"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: the largest model a config.json may ask for (rasd3d_swinh, the largest released, has 0.65e9)
MAX_PARAMS = 2_000_000_000
#: intensity normalisations a weights config may name (``normalization.method``): ``minmax``
#: scales each image into ``range``; ``zscore`` expects zero mean and unit variance
NORMALIZATION_METHODS = ("minmax", "zscore")


def check_tag(cfg) -> None:
    """A registered tag must say where its weights are and pin what it reads."""
    where = f"pretrained config {cfg.name}"
    if not (cfg.file or cfg.path or cfg.hf_hub_id):
        raise RasdValueError(f"{where}: no source (file, path or hf_hub_id)")
    pins = cfg.sha256
    for fname, digest in pins.items():
        if not (isinstance(digest, str) and _SHA256.match(digest)):
            raise RasdValueError(f"{where}: sha256 of {fname} must be 64 hex digits, got {digest!r}")
    if not pins.get("model.safetensors"):
        raise RasdValueError(f"{where}: needs the sha256 of model.safetensors")
    if cfg.hf_hub_id:
        if not (cfg.revision and _COMMIT.match(cfg.revision)):
            raise RasdValueError(f"{where}: pin hf_hub_id to a 40-hex commit")
        if not pins.get("config.json"):
            raise RasdValueError(f"{where}: needs the sha256 of config.json (a tag pins every file "
                                 "it reads: config.json sets the architecture and normalisation)")


@dataclass(frozen=True)
class ArgSpec:
    """One typed constructor argument.

    Args:
        kind: ``int``, ``float``, ``bool``, ``str``, ``int_list`` or ``any`` (a JSON value).
        low / high: inclusive range of a number (each element of an ``int_list``).
        choices: allowed values (strings, or the first element of a ``[name, {args}]`` pair).
        length: allowed list lengths (``int_list``).
        pair: a string argument may also be ``[name, {args}]`` (MONAI ``act`` / ``norm``).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    length: tuple[int, ...] | None = None
    pair: bool = False


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "int_list":
        return isinstance(value, (list, tuple)) and all(_type_ok("int", v) for v in value)
    return True


def _check_arg(field: str, spec: ArgSpec, value: Any) -> None:
    def bad(msg: str):
        raise ConfigValidationError(f"{field} {msg}", field=field)

    if spec.pair and isinstance(value, (list, tuple)):
        if not (len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], Mapping)):
            bad(f"must be a name or [name, {{args}}], got {value!r}")
        value = value[0]
        kind = "str"
    else:
        kind = spec.kind
    if not _type_ok(kind, value):
        names = {"int_list": "a list of integers", "int": "an integer", "float": "a number",
                 "bool": "true or false", "str": "a string"}
        bad(f"must be {names.get(kind, kind)}, got {type(value).__name__} {value!r}")
    if spec.choices is not None:
        probe = value.lower() if isinstance(value, str) else value
        if probe not in spec.choices:
            bad(f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
    items = list(value) if kind == "int_list" else [value] if kind in ("int", "float") else []
    if spec.length is not None and kind == "int_list" and len(items) not in spec.length:
        bad(f"must have {' or '.join(map(str, spec.length))} elements, got {len(items)}")
    for v in items:
        if spec.low is not None and v < spec.low or spec.high is not None and v > spec.high:
            bad(f"{v!r} is out of range [{spec.low}, {spec.high}]")


def check_model_args(architecture: str, args: Mapping[str, Any], schema, *, where: str = "model_args",
                     max_params: int = MAX_PARAMS) -> None:
    """Check ``args`` against the architecture's ``schema`` (``rasd_hub.models`` defines one per
    family: ``{"args": {name: ArgSpec}, "check": fn(args), "params": fn(args) -> int}``)."""
    if not isinstance(args, Mapping):
        raise ConfigValidationError(f"{where} must be an object, got {type(args).__name__}", field=where)
    if schema is None:
        return
    known: Mapping[str, ArgSpec] = schema["args"]
    for key, value in args.items():
        if key not in known:
            raise ConfigValidationError(
                f"{where}.{key} is not an argument of {architecture} (known: {', '.join(sorted(known))})",
                field=f"{where}.{key}")
        _check_arg(f"{where}.{key}", known[key], value)
    check: Callable | None = schema.get("check")
    if check is not None:
        problem = check(args)
        if problem:
            fld, msg = problem
            raise ConfigValidationError(f"{where}.{fld} {msg}", field=f"{where}.{fld}")
    estimate = schema["params"](args)
    if estimate > max_params:
        raise ConfigValidationError(
            f"{where} asks for a {architecture} of about {estimate:,} parameters "
            f"({estimate * 4 / 2**30:.1f} GiB in float32), over the ceiling of {max_params:,}; "
            "the config is wrong or not meant for rasd_hub (check channels / feature_size)",
            field=where)


_TOP_KEYS = {
    "format": "str", "format_version": "int", "config_version": "int", "architecture": "str",
    "model_args": "any", "features_only": "bool", "spatial_dims": "int", "in_chans": "int",
    "out_channels": "any", "input_divisor": "int", "min_input_size": "int", "head": "any",
    "head_type": "any", "stem": "any", "normalization": "any", "embedding_dim": "any",
    "license": "str", "base_model": "str", "provenance": "any", "weights": "any",
    "pretrained_cfg": "any", "num_classes": "any", "num_features": "any", "hub_id": "str",
    "feature_channels": "any", "feature_reductions": "any",
}


def check_normalization(norm: Any, where: str) -> None:
    """Refuse a ``normalization`` entry that does not say how to scale inputs: an unknown method
    must never fall back to a default silently (fine-tuning would feed wrongly scaled images)."""
    if norm is None:
        return

    def bad(what: str) -> None:
        raise ConfigValidationError(
            f"{where}: normalization {what}. Known methods: {', '.join(NORMALIZATION_METHODS)} "
            "(minmax with \"range\": [lo, hi]); fix config.json or re-export the weights "
            "with `rasd hub export`.", field="normalization")

    if not isinstance(norm, Mapping):
        bad(f"must be an object, got {norm!r}")
    method = norm.get("method")
    if method not in NORMALIZATION_METHODS:
        bad(f"method {method!r} is unknown")
    if method == "minmax":
        lo_hi = norm.get("range")
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2
                and all(_type_ok("float", v) for v in lo_hi) and lo_hi[0] < lo_hi[1]):
            bad(f"range {lo_hi!r} is not [lo, hi] with lo < hi")
    for key in ("mean", "std"):
        if key in norm and not _type_ok("float", norm[key]):
            bad(f"{key} {norm[key]!r} is not a number")
    if "std" in norm and not norm["std"] > 0:
        bad(f"std {norm['std']!r} is not positive")


def check_config(config: Any, where: str, *, arch_lookup: Callable[[str], Any]) -> None:
    """Check a whole ``config.json`` (already parsed): known top-level keys and their types, the
    architecture registered, its ``model_args`` against the architecture's schema, the
    normalisation, and that the recorded channels agree with the arguments."""
    def bad(field: str, msg: str):
        raise ConfigValidationError(f"{where}: {field} {msg}", field=field)

    if not isinstance(config, Mapping):
        raise ConfigValidationError(f"{where} must hold a JSON object, got {type(config).__name__}",
                                    field="")
    for key in ("architecture", "model_args"):
        if key not in config:
            bad(key, "is missing: not a rasd_hub weights config (re-export it with `rasd hub "
                     "export` or `rasd hub convert`)")
    for key, value in config.items():
        kind = _TOP_KEYS.get(key)
        if kind is None:
            bad(key, f"is not a known config.json key (known: {', '.join(sorted(_TOP_KEYS))})")
        if not _type_ok(kind, value):
            bad(key, f"must be a {kind}, got {type(value).__name__} {value!r}")
    arch = config["architecture"]
    try:
        spec = arch_lookup(arch)
    except RasdValueError as err:
        raise ConfigValidationError(f"{where}: architecture: {err}", field="architecture") from None
    args = config["model_args"]
    try:
        check_model_args(arch, args, spec.args_schema)
    except ConfigValidationError as err:
        raise ConfigValidationError(f"{where}: {err}", field=err.field) from None
    if isinstance(args, Mapping) and args.get("spatial_dims", spec.spatial_dims) != spec.spatial_dims:
        bad("model_args.spatial_dims", f"is {args['spatial_dims']!r} but {arch} is {spec.spatial_dims}D")
    if "spatial_dims" in config and config["spatial_dims"] != spec.spatial_dims:
        bad("spatial_dims", f"is {config['spatial_dims']!r} but {arch} is {spec.spatial_dims}D")
    if "in_chans" in config and "in_channels" in args and config["in_chans"] != args["in_channels"]:
        bad("in_chans", f"{config['in_chans']!r} disagrees with model_args.in_channels {args['in_channels']!r}")
    weights = config.get("weights")
    if weights is not None:
        if not isinstance(weights, Mapping):
            bad("weights", f"must be an object, got {weights!r}")
        sha = weights.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            bad("weights.sha256", f"must be 64 hex digits, got {sha!r}")
        fname = weights.get("file", "model.safetensors")
        if not (isinstance(fname, str) and fname.endswith(".safetensors") and "/" not in fname
                and "\\" not in fname and not fname.startswith(".")):
            bad("weights.file", f"must be a .safetensors file name in the same folder, got {fname!r}")
    check_normalization(config.get("normalization"), where)
