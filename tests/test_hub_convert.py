"""Conversion of released-layout checkpoints and export of training checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import rasd_hub
from rasd_hub.cli import main
from rasd_hub.convert import convert_checkpoint, export_checkpoint, unwrap_released_state_dict
from rasd_hub.errors import StateDictMismatchError, WeightsFormatError

SWIN_SMALL = dict(feature_size=12, depths=[1, 1, 1, 1])


def _released_swin(layout: str):
    """A checkpoint laid out like the released RaSE_*.pth files (MONAI SwinUNETR keys)."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=32, feature_size=12, depths=(1, 1, 1, 1), use_v2=True)
    sd = net.state_dict()
    if layout == "plain":
        return sd, sd
    if layout == "state_dict+module":
        return {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, sd
    if layout == "network_weights":
        return {"network_weights": sd}, sd
    if layout == "net+backbone":
        return {"net": {"backbone." + k: v for k, v in sd.items()}}, sd
    if layout == "student+swin_vit":
        return {"student": {k.replace("swinViT.", "swin_vit."): v for k, v in sd.items()}, "teacher": {}}, sd
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["plain", "state_dict+module", "network_weights", "net+backbone",
                                    "student+swin_vit"])
def test_convert_released_swin_layouts_load_strictly(layout, tmp_path):
    ckpt, sd = _released_swin(layout)
    torch.save(ckpt, tmp_path / "RaSE_B.pth")
    out, summary = convert_checkpoint(tmp_path / "RaSE_B.pth", tmp_path / "out", "rasd3d_swinb",
                                      model_args={"depths": [1, 1, 1, 1]})
    assert summary["model_args"]["feature_size"] == 12  # read off the weights
    model = rasd_hub.load(out)
    assert model.load_report.ok and not model.load_report.reinitialized
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["source_file"] == "RaSE_B.pth" and len(cfg["provenance"]["source_sha256"]) == 64


def test_convert_rasd2d_via_cli(tmp_path, capsys):
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=2, in_channels=1, out_channels=32, channels=(8, 16, 32, 64, 128),
               strides=(2, 2, 2, 2), num_res_units=4, act="relu", norm="batch", dropout=0.15)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "RaSE_2D.pth")
    code = main(["hub", "convert", str(tmp_path / "RaSE_2D.pth"), str(tmp_path / "w"), "--arch", "rasd2d",
                 "--model-arg", "channels=[8,16,32,64,128]"])
    assert code == 0
    out = capsys.readouterr().out
    assert "stripped 'module.'" in out and "sha256" in out
    model = rasd_hub.load(tmp_path / "w")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())


def test_convert_2d_swin_into_unet_explains_the_mismatch(tmp_path):
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=32, feature_size=12, depths=(1, 1, 1, 1), spatial_dims=2, use_v2=True)
    torch.save(net.state_dict(), tmp_path / "RaSE_2D.pth")
    with pytest.raises(StateDictMismatchError, match="holds a Swin UNETR"):
        convert_checkpoint(tmp_path / "RaSE_2D.pth", tmp_path / "w", "rasd2d")
    assert not (tmp_path / "w" / "model.safetensors").exists()


class Payload:
    """Stands in for an arbitrary pickled object (code that would run when unpickled)."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_convert_never_unpickles_objects(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsFormatError, match="weights_only=True"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "w", "rasd3d_swinb")
    assert "unpickled!" not in capsys.readouterr().out


def test_unwrap_reports_unknown_layouts():
    with pytest.raises(WeightsFormatError, match="no state dict"):
        unwrap_released_state_dict({"optimizer": {"lr": 1.0}})


def _training_checkpoint(path, *, name="rasd3d_small", **kwargs):
    model = rasd_hub.create_model(name, **kwargs)
    ckpt = {
        "model": model.state_dict(),
        "model_config": model.rasd_config,
        "provenance": {"preset": name, "step": 7, "seed": 3, "batch_size": 2, "device": "cpu",
                       "wall_time_s": 1.5, "code_version": "0.1.0"},
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "step": 7,
    }
    torch.save(ckpt, path)
    return model


def test_export_training_checkpoint(tmp_path):
    model = _training_checkpoint(tmp_path / "step_0000007.pt", dropout=0.1)
    out = export_checkpoint(tmp_path / "step_0000007.pt", tmp_path / "w")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["step"] == 7 and cfg["provenance"]["preset"] == "rasd3d_small"
    assert cfg["model_args"] == model.rasd_config["model_args"]
    loaded = rasd_hub.load(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_export_cli_and_bad_checkpoint(tmp_path, capsys):
    _training_checkpoint(tmp_path / "c.pt", name="rasd3d_swinb", **SWIN_SMALL)
    assert main(["hub", "export", str(tmp_path / "c.pt"), str(tmp_path / "w")]) == 0
    assert "exported rasd3d_swinb" in capsys.readouterr().out
    assert rasd_hub.load(tmp_path / "w").rasd_config["model_args"]["feature_size"] == 12
    torch.save({"weights": {}}, tmp_path / "bad.pt")
    assert main(["hub", "export", str(tmp_path / "bad.pt"), str(tmp_path / "w2")]) == 2
    assert "not a pre-training checkpoint" in capsys.readouterr().err


def test_cli_list_and_info(capsys):
    assert main(["hub", "list"]) == 0
    out = capsys.readouterr().out
    for name in rasd_hub.list_models():
        assert name in out
    assert main(["hub", "info", "rasd3d_swinl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_params"] > 2e8 and "our reading" in info["notes"] and "rasd hub convert" in info["how_to_get_weights"]
    assert main(["hub", "info", "rasd3d_swinbb"]) == 2
    assert "Did you mean 'rasd3d_swinb'" in capsys.readouterr().err
