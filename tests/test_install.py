"""The headline call on a user's machine: `rasd hub convert RaSE_B.pth --install` (or
`rasd hub install DIR`), then create_model('rasd3d_swinb', pretrained=True) works offline, pinned
by the installed files' sha256."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rasd_hub
from rasd_hub._io import sha256_file
from rasd_hub.cli import main
from rasd_hub.errors import ChecksumMismatchError, WeightsNotAvailableError


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    """An empty RASD_HUB_HOME; tags installed during the test are removed afterwards."""
    import rasd_hub.models  # noqa: F401  (the shipped tags are registered before we look)
    from rasd_hub._registry import list_pretrained, unregister_pretrained

    home = tmp_path / "rasd-home"
    monkeypatch.setenv("RASD_HUB_HOME", str(home))
    before = set(list_pretrained())
    yield home
    for name in set(list_pretrained()) - before:
        unregister_pretrained(name)


@pytest.fixture
def released_swinb(tmp_path):
    """A checkpoint in the released RaSE_B.pth layout (a narrow Swin UNETR, 'state_dict' wrapper,
    'module.' prefixes), and its plain state dict."""
    torch.manual_seed(0)
    net = rasd_hub.create_model("rasd3d_swinb", feature_size=12)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "RaSE_B.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    return path, sd


def test_no_weights_error_names_the_install_command_first(hub_home):
    with pytest.raises(WeightsNotAvailableError) as err:
        rasd_hub.create_model("rasd3d_swinb", pretrained=True)
    msg = str(err.value)
    first = msg.index("rasd hub convert RaSE_B.pth --install")
    assert first < msg.index("rasd hub install") < msg.index("rasd pretrain")


def test_convert_install_then_the_headline_call_works_offline(hub_home, released_swinb, capsys,
                                                             monkeypatch, tmp_path):
    pth, sd = released_swinb
    assert main(["hub", "convert", str(pth), "--install"]) == 0  # RaSE_B.pth: rasd3d_swinb
    out = capsys.readouterr().out
    assert "installed rasd3d_swinb.rase_b" in out
    installed = hub_home / "installed" / "rasd3d_swinb.rase_b"
    assert sha256_file(installed / "model.safetensors") in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = rasd_hub.create_model("rasd3d_swinb", pretrained=True)
    assert model.pretrained_cfg.model_args["feature_size"] == 12  # read off the weights
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    cfg = model.pretrained_cfg
    assert cfg.weights_ref == "rasd3d_swinb.rase_b"
    assert cfg.sha256["model.safetensors"] == sha256_file(installed / "model.safetensors")
    assert cfg.provenance["source_sha256"] == sha256_file(pth)  # the source file, pinned too
    assert cfg.provenance["source_file"] == "RaSE_B.pth"
    # rasd hub list says where the name's weights come from
    assert main(["hub", "list"]) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert str(installed) in rows["rasd3d_swinb"] and "rase_b" in rows["rasd3d_swinb"]
    assert "none yet: rasd hub convert RaSE_2D.pth --install" in rows["rasd2d"]
    # a new interpreter on this machine finds it too (the index is read on import), offline
    code = textwrap.dedent("""
        import rasd_hub
        m = rasd_hub.create_model("rasd3d_swinb", pretrained=True, num_classes=2, head="classifier")
        print(m.pretrained_cfg.weights_ref, m.num_classes)
    """)
    env = dict(os.environ, RASD_HUB_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["rasd3d_swinb.rase_b", "2"]
    # pinned: an edited config.json (other moments) or replaced weights are refused
    config = json.loads((installed / "config.json").read_text())
    config["normalization"]["mean"] = 0.9
    (installed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ChecksumMismatchError, match="config.json"):
        rasd_hub.create_model("rasd3d_swinb", pretrained=True)


def test_convert_without_arch_needs_a_released_file_name(hub_home, released_swinb, tmp_path, capsys):
    pth, _ = released_swinb
    renamed = pth.rename(tmp_path / "my_swin.pth")
    assert main(["hub", "convert", str(renamed), "--install"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the architecture of my_swin.pth" in err and "--arch" in err
    assert main(["hub", "convert", str(renamed), "--install", "--arch", "rasd3d_swinb", "--tag", "mine"]) == 0
    assert "installed rasd3d_swinb.mine" in capsys.readouterr().out


def test_install_a_weights_folder_under_a_tag(hub_home, tmp_path, capsys):
    torch.manual_seed(1)
    model = rasd_hub.create_model("rasd2d_small")
    rasd_hub.save_pretrained(model, tmp_path / "w", provenance={"preset": "rasd2d_small", "seed": 1})
    assert main(["hub", "install", str(tmp_path / "w"), "--tag", "mine"]) == 0
    assert "installed rasd2d_small.mine" in capsys.readouterr().out
    loaded = rasd_hub.create_model("rasd2d_small.mine", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # the shipped tag stays the default of rasd2d_small
    assert rasd_hub.create_model("rasd2d_small", pretrained=True).pretrained_cfg.weights_ref == \
        "rasd2d_small.v2_synth10k_cpu"
    assert main(["hub", "list", "--pretrained"]) == 0
    assert str(hub_home / "installed" / "rasd2d_small.mine") in capsys.readouterr().out
    # a folder whose weights no longer match its own config is not installed
    data = bytearray((tmp_path / "w" / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "w" / "model.safetensors").write_bytes(bytes(data))
    assert main(["hub", "install", str(tmp_path / "w"), "--tag", "broken"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert "rasd2d_small.broken" not in rasd_hub.list_models(pretrained=True)
    assert main(["hub", "install", str(tmp_path / "w"), "--tag", "Bad-Tag"]) == 2
