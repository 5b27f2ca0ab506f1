"""rasd models as timm models: timm's registry, create_model, hf-hub: loader and model interface."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rasd_hub
import timm

ALL = ["rasd2d", "rasd2d_resenc_small", "rasd2d_resencl", "rasd2d_small", "rasd3d_resenc_small",
       "rasd3d_resencl", "rasd3d_small", "rasd3d_swinb", "rasd3d_swinh", "rasd3d_swinl"]
#: the big ones shrunk so that CPU tests stay fast (the interface does not depend on width)
SMALL = {
    "rasd2d": dict(channels=[8, 16, 32, 64, 128]),
    "rasd2d_small": {},
    "rasd3d_small": {},
    "rasd2d_resenc_small": {},
    "rasd3d_resenc_small": {},
    "rasd2d_resencl": dict(features_per_stage=[4, 8, 8, 8, 8, 8, 8, 8], n_blocks_per_stage=[1] * 8),
    "rasd3d_resencl": dict(features_per_stage=[4, 8, 8, 8, 8, 8], n_blocks_per_stage=[1] * 6),
    "rasd3d_swinb": dict(feature_size=12, depths=[1, 1, 1, 1]),
    "rasd3d_swinl": dict(feature_size=12, depths=[1, 1, 1, 1]),
    "rasd3d_swinh": dict(feature_size=12, depths=[1, 1, 1, 1]),
    "rasd2d_resenc_small": {},
    "rasd3d_resenc_small": {},
    "rasd2d_resencl": dict(features_per_stage=[4] * 8),
    "rasd3d_resencl": dict(features_per_stage=[4] * 6),
}


def _input(name, batch=1):
    """The smallest input that trains (instance norm needs more than one voxel at the bottleneck)."""
    info = rasd_hub.model_info(name)
    return torch.rand(batch, 1, *(2 * info["input_divisor"],) * info["spatial_dims"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("first", ["rasd_hub", "timm"])
def test_after_import_rasd_hub_every_model_is_in_timms_registry(first):
    second = "timm" if first == "rasd_hub" else "rasd_hub"
    code = textwrap.dedent(f"""
        import sys, json
        import {first}
        light = 'torch' not in sys.modules
        import {second}
        import timm
        print(json.dumps([light, timm.list_models('rasd*'), timm.list_models('rasd*', pretrained=True)]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    light, names, tagged = json.loads(proc.stdout.strip().splitlines()[-1])
    assert names == ALL
    assert tagged == rasd_hub.list_models(pretrained=True)
    if first == "rasd_hub":
        assert light  # registering waits for timm: `import rasd_hub` stays free of torch


def test_timm_create_model_loads_through_rasd_hubs_verified_path():
    from safetensors.torch import load_file

    model = timm.create_model("rasd2d_small", pretrained=True, num_classes=3, in_chans=2)
    cfg = rasd_hub.model_info("rasd2d_small.v2_synth10k_cpu")["weights"][0]
    assert model.pretrained_cfg.source.startswith("rasd2d_small.v2_synth10k_cpu")
    assert model.pretrained_cfg.sha256["model.safetensors"] == cfg["sha256"]["model.safetensors"]
    assert model.num_classes == 3 and model.pretrained_cfg.in_chans == 2
    assert model.load_report.reinitialized and model.load_report.adapted
    from rasd_hub.pretrained import get_pretrained_cfg

    folder = Path(rasd_hub.__file__).parent / get_pretrained_cfg("rasd2d_small").file
    shipped = load_file(str(folder / "model.safetensors"))
    key = "model.1.submodule.0.conv.unit0.conv.weight"  # an encoder weight, neither stem nor head
    assert torch.equal(model.state_dict()[key], shipped[key])
    # the same as rasd_hub's own call, tags included
    ours = rasd_hub.create_model("rasd2d_small.synth10k_cpu", pretrained=True)
    theirs = timm.create_model("rasd2d_small.synth10k_cpu", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_timm_local_dir_and_overlay_file_load_verified(tmp_path):
    from rasd_hub.errors import ChecksumMismatchError

    saved = rasd_hub.create_model("rasd3d_small")
    rasd_hub.save_pretrained(saved, tmp_path / "w")
    for model in (timm.create_model(f"local-dir:{tmp_path / 'w'}", pretrained=True),
                  timm.create_model("rasd3d_small", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "w")))):
        assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values()))
    data = bytearray((tmp_path / "w" / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size: timm's own loader would take it
    (tmp_path / "w" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        timm.create_model(f"local-dir:{tmp_path / 'w'}", pretrained=True)


@pytest.mark.parametrize("name", ALL)
def test_timm_model_interface(name):
    model = timm.create_model(name, **SMALL[name]).eval()
    x = _input(name)
    # pretrained_cfg: a frozen record of what the model is
    cfg = model.pretrained_cfg
    assert isinstance(cfg, rasd_hub.PretrainedCfg) and cfg.architecture == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 7
    assert cfg.input_size[0] == 1 and len(cfg.input_size) == 1 + cfg.spatial_dims
    assert cfg.first_conv and all(k in model.state_dict() for k in cfg.first_conv)
    assert cfg.classifier and any(k.startswith(cfg.classifier + ".") for k in model.state_dict())
    assert cfg.normalization["method"] == "minmax" and cfg.paper and cfg.license
    # num_classes / reset_classifier: a new head, the encoder untouched
    assert model.num_classes == 32
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(cfg.classifier + ".")}
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.pretrained_cfg.num_classes == 5
    assert model.rasd_config["model_args"]["out_channels"] == 5
    with torch.no_grad():
        assert model(x).shape == (1, 5, *x.shape[2:])
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # forward_features / forward_intermediates: the encoder's maps
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x, indices=2)
        everything = model.forward_intermediates(x, intermediates_only=True)
    assert feats.shape[1] == model.num_features
    assert torch.equal(final, feats) and len(inter) == 2 and torch.equal(inter[-1], feats)
    encoder = timm.create_model(name, features_only=True, out_indices=(0, -1), **SMALL[name]).eval()
    assert len(encoder.feature_info) == 2 and encoder.num_classes == 0
    with torch.no_grad():
        maps = encoder(x)
    assert [m.shape[1] for m in maps] == encoder.feature_info.channels()
    assert [m.shape[1] for m in (everything[0], everything[-1])] == encoder.feature_info.channels()
    assert [x.shape[2] // m.shape[2] for m in maps] == encoder.feature_info.reduction()
    # set_grad_checkpointing: same values
    model.train()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    y1 = model(x)
    model.set_grad_checkpointing(False)
    torch.manual_seed(1)
    y2 = model(x)
    assert torch.allclose(y1, y2, atol=1e-5)
    y1.mean().backward()


def test_rasd_config_is_a_copy_and_set_normalization_replaces_the_frozen_config():
    from rasd_hub.errors import WeightsFormatError

    model = rasd_hub.create_model("rasd2d_small")
    model.rasd_config["normalization"]["mean"] = 123.0  # edits a copy
    assert "mean" not in model.pretrained_cfg.normalization
    rasd_hub.set_normalization(model, dict(model.pretrained_cfg.normalization, mean=0.5, std=0.2))
    assert model.rasd_config["normalization"]["mean"] == 0.5
    with pytest.raises(WeightsFormatError, match="method 'percentile' is unknown"):
        rasd_hub.set_normalization(model, {"method": "percentile"})


def test_rasd_hub_push_round_trips_through_timms_hf_hub_loader(hub_server, hf_cache, tmp_path, capsys):
    """`rasd hub push` -> local Hub -> timm.create_model('hf-hub:...'), verified by rasd_hub: a
    same-size corrupted blob in the cache is caught and fetched again."""
    from rasd_hub.cli import main

    model = rasd_hub.create_model("rasd2d_small")
    rasd_hub.save_pretrained(model, tmp_path / "w", provenance={"preset": "rasd2d_small", "seed": 0})
    assert main(["hub", "push", str(tmp_path / "w"), "rasd-test/timm2d", "--endpoint", hub_server.url,
                 "--token", "t", "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["architecture"] == "rasd2d_small" and "model_args" in config
    assert config["pretrained_cfg"]["input_size"] == [1, 128, 128]
    assert config["pretrained_cfg"]["mean"] == [0.0] and config["pretrained_cfg"]["std"] == [1.0]
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    code = textwrap.dedent(f"""
        import json, sys, torch, timm
        import rasd_hub
        name = "hf-hub:{pushed['pin'][len('hf-hub:'):]}"
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        m = timm.create_model(name, pretrained=True, num_classes=2, cache_dir={str(hf_cache)!r})
        # every pre-trained layer kept, a new 1x1 class head on the embedding
        same = all(torch.equal(expected[k], v) for k, v in m.state_dict().items() if not k.startswith("head."))
        same = same and set(m.state_dict()) == set(expected) | {{"head.weight", "head.bias"}}
        blob = m.pretrained_cfg.sha256["model.safetensors"]
        # corrupt the cached blob, same size: rasd_hub re-verifies, deletes it and downloads again
        import glob
        path = glob.glob({str(hf_cache)!r} + "/models--rasd-test--timm2d/blobs/" + blob)[0]
        data = bytearray(open(path, "rb").read()); data[-1] ^= 0xFF; open(path, "wb").write(bytes(data))
        m2 = timm.create_model(name, pretrained=True, cache_dir={str(hf_cache)!r})
        again = all(torch.equal(expected[k], v) for k, v in m2.state_dict().items())
        print(json.dumps([same, again, m.pretrained_cfg.source, m.pretrained_cfg.revision, blob,
                          m.num_classes]))
    """)
    env = dict(os.environ, HF_ENDPOINT=hub_server.url, HF_HUB_DISABLE_XET="1", HF_HUB_CACHE=str(hf_cache))
    hub_server.state.log.clear()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same, again, source, revision, blob, classes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert same and again and classes == 2
    assert source == pushed["pin"] and revision == pushed["commit"]
    assert blob == pushed["sha256"]["model.safetensors"]


def test_timms_data_config_reads_the_pretrained_cfg():
    """timm's data helpers read the frozen config as a dict: no ImageNet moments (the network takes
    [0, 1] images; the measured moments stay in normalization)."""
    from timm.data import resolve_model_data_config

    model = timm.create_model("rasd2d_small", pretrained=True)
    data = resolve_model_data_config(model)
    assert data["input_size"] == (1, 128, 128) and data["mean"] == (0.0,) and data["std"] == (1.0,)
    assert model.pretrained_cfg["normalization"]["mean"] == 0.465
    assert resolve_model_data_config(timm.create_model("rasd3d_small"))["input_size"] == (1, 64, 64, 64)
