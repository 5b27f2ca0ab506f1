"""config.json is input: every bad config gets one clear error naming the field, before anything
is built; a registered tag pins every file it reads."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import rasd_hub
from rasd_hub.errors import ChecksumMismatchError, ConfigValidationError


@pytest.fixture(scope="module")
def good_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w2d") / "w"
    rasd_hub.save_pretrained(rasd_hub.create_model("rasd2d_small"), folder)
    return folder


@pytest.fixture(scope="module")
def good_swin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wswin") / "w"
    rasd_hub.save_pretrained(rasd_hub.create_model("rasd3d_swinb", feature_size=12, depths=[1, 1, 1, 1]),
                             folder)
    return folder


def _edit(config: dict, path: str, value) -> dict:
    """``config`` with the dotted ``path`` set to ``value`` (``DELETE`` removes it)."""
    out = json.loads(json.dumps(config))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()
BIG = 16384

# (kind, folder, dotted field, bad value, field the error names, message)
BAD_CONFIGS = [
    ("no architecture", "2d", "architecture", DELETE, "architecture", "architecture is missing"),
    ("no model_args", "2d", "model_args", DELETE, "model_args", "model_args is missing"),
    ("unknown architecture", "2d", "architecture", "rasd9d", "architecture", "unknown architecture 'rasd9d'"),
    ("unknown top-level key", "2d", "colour", "blue", "colour", "colour is not a known config.json key"),
    ("model_args not an object", "2d", "model_args", [1, 2], "model_args", "model_args must be an object"),
    ("unknown model argument", "2d", "model_args.chanels", [8, 16], "model_args.chanels",
     "chanels is not an argument of rasd2d_small"),
    ("string spatial_dims", "2d", "model_args.spatial_dims", "2", "model_args.spatial_dims",
     "must be an integer, got str '2'"),
    ("3D arguments for a 2D architecture", "2d", "model_args.spatial_dims", 3, "model_args.spatial_dims",
     "is 3 but rasd2d_small is 2D"),
    ("huge channel count", "2d", "model_args.channels.4", 10_000_000, "model_args.channels",
     "10000000 is out of range"),
    ("parameter count over the ceiling", "2d", "model_args.channels", [BIG] * 5, "model_args",
     "over the ceiling"),
    ("strides do not match channels", "2d", "model_args.strides", [2, 2], "model_args.strides",
     "needs len\\(channels\\) - 1 = 4 values, got 2"),
    ("negative residual units", "2d", "model_args.num_res_units", -1, "model_args.num_res_units",
     "-1 is out of range"),
    ("dropout above 1", "2d", "model_args.dropout", 1.5, "model_args.dropout", "1.5 is out of range"),
    ("unknown activation", "2d", "model_args.act", "relux", "model_args.act", "must be one of"),
    ("malformed [name, args] norm", "2d", "model_args.norm", ["batch"], "model_args.norm",
     "must be a name or \\[name, \\{args\\}\\]"),
    ("boolean channel count", "2d", "model_args.in_channels", True, "model_args.in_channels",
     "must be an integer, got bool"),
    ("in_chans disagrees with the arguments", "2d", "in_chans", 3, "in_chans",
     "disagrees with model_args.in_channels 1"),
    ("unknown normalisation", "2d", "normalization.method", "percentile", "normalization",
     "method 'percentile' is unknown"),
    ("non-finite mean", "2d", "normalization.mean", "nan", "normalization", "mean 'nan' is not a number"),
    ("bad weights sha256", "2d", "weights.sha256", "abc", "weights.sha256", "must be 64 hex digits"),
    ("weights file outside the folder", "2d", "weights.file", "../other.safetensors", "weights.file",
     "must be a .safetensors file name in the same folder"),
    ("pickle weights file", "2d", "weights.file", "model.pth", "weights.file", "must be a .safetensors"),
    ("licence not a string", "2d", "license", 7, "license", "license must be a str"),
    ("features_only not a boolean", "2d", "features_only", "yes", "features_only", "must be a bool"),
    ("Swin width not a multiple of 12", "swin", "model_args.feature_size", 50, "model_args.feature_size",
     "must be a multiple of 12"),
    ("Swin with three stages", "swin", "model_args.depths", [1, 1, 1], "model_args.depths",
     "must have 4 elements, got 3"),
    ("Swin heads that do not divide the width", "swin", "model_args.num_heads", [5, 6, 12, 24],
     "model_args.num_heads", "stage 0: width 12 is not divisible by 5 heads"),
    ("Swin attention dropout above 1", "swin", "model_args.attn_drop_rate", 2.0,
     "model_args.attn_drop_rate", "2.0 is out of range"),
]


def test_the_table_has_at_least_15_kinds():
    assert len({row[0] for row in BAD_CONFIGS}) == len(BAD_CONFIGS) >= 15


@pytest.mark.parametrize("kind, which, path, value, field, message", BAD_CONFIGS, ids=[r[0] for r in BAD_CONFIGS])
def test_bad_config_gets_one_clear_error_naming_the_field(kind, which, path, value, field, message,
                                                          good_2d, good_swin, tmp_path):
    src = good_2d if which == "2d" else good_swin
    folder = tmp_path / "w"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_edit(config, path, value)))
    for call in (lambda: rasd_hub.load(folder), lambda: rasd_hub.create_model(folder),
                 lambda: rasd_hub.create_model(folder, pretrained=True)):
        t0 = time.perf_counter()
        with pytest.raises(ConfigValidationError, match=message) as err:
            call()
        assert time.perf_counter() - t0 < 5  # refused before anything big is allocated
        assert err.value.field == field
        assert str(folder) in str(err.value)  # says which file


def test_a_config_that_is_not_an_object(good_2d, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(good_2d, folder)
    (folder / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigValidationError, match="must hold a JSON object"):
        rasd_hub.load(folder)


def test_keyword_arguments_are_checked_too():
    with pytest.raises(ConfigValidationError, match="arguments.channels .*out of range"):
        rasd_hub.create_model("rasd2d_small", channels=[16, 32, 64, 128, 10_000_000])
    with pytest.raises(ConfigValidationError, match="arguments.in_channels must be an integer"):
        rasd_hub.create_model("rasd2d_small", in_chans="3")


def test_the_parameter_estimate_is_within_a_factor_two_of_the_real_count():
    from rasd_hub._registry import get_arch

    for name in rasd_hub.list_models():
        spec = get_arch(name)
        if spec.num_params < 2e8:
            args = rasd_hub.create_model(name).model_args
        elif name.startswith("rasd3d_swin"):  # the real count is in the registry (test_models)
            args = dict(feature_size={"rasd3d_swinl": 96, "rasd3d_swinh": 144}[name])
        else:
            with torch.device("meta"):  # the arguments only, nothing allocated
                args = rasd_hub.create_model(name).model_args
        estimate = spec.args_schema["params"](args)
        assert spec.num_params / 2 <= estimate <= spec.num_params * 2, (name, estimate, spec.num_params)


def test_a_tag_pins_config_json_too(tmp_path):
    """An edited config.json (other normalisation moments, which nnU-Net would then apply) is
    refused even when model.safetensors is untouched."""
    from rasd_hub._registry import unregister_pretrained
    from rasd_hub.pretrained import PretrainedCfg, get_pretrained_cfg, register_pretrained

    shipped = get_pretrained_cfg("rasd2d_small")
    assert set(shipped.sha256) == {"model.safetensors", "config.json"}
    copy = tmp_path / "copy"
    shutil.copytree(Path(rasd_hub.__file__).parent / shipped.file, copy)
    cfg = register_pretrained(PretrainedCfg("rasd2d_small", "edited_copy", path=str(copy),
                                            sha256=shipped.sha256))
    try:
        assert rasd_hub.load(cfg.name).pretrained_cfg.normalization["mean"] == 0.465
        config = json.loads((copy / "config.json").read_text())
        config["normalization"]["mean"] = 0.1
        (copy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with pytest.raises(ChecksumMismatchError, match="config.json .*edited or replaced") as err:
            rasd_hub.load(cfg.name)
        assert err.value.expected == shipped.sha256["config.json"]
    finally:
        unregister_pretrained(cfg.name)
