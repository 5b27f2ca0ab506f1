"""nnU-Net's Residual Encoder U-Nets in rasd_hub: nnU-Net's keys, one tensor per file entry, the
PDL embedding, pre-training presets, and nnssl checkpoints out and in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import rasd_hub
from rasd_hub.errors import WeightsFormatError
from rasd_hub.models.resenc import KW_REQUIRING_IMPORT, NETWORK_CLASS_NAME
from rasd_hub.nnssl import convert_nnssl, read_nnssl_checkpoint, write_nnssl_checkpoint

RESENC = ["rasd2d_resenc_small", "rasd3d_resenc_small", "rasd2d_resencl", "rasd3d_resencl"]


def nnunet_network(model, num_classes: int, deep_supervision: bool):
    """The network nnU-Net builds from plans carrying this model's layout."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(NETWORK_CLASS_NAME, model.dynamic_network_kwargs(),
                                  list(KW_REQUIRING_IMPORT), model.rasd_config["in_chans"],
                                  num_classes, deep_supervision=deep_supervision)


@pytest.mark.parametrize("name", RESENC)
def test_keys_and_size_are_nnunets_own_network(name):
    with torch.device("meta"):  # the ResEnc-L layouts at full width, without allocating them
        ours = rasd_hub.create_model(name)
        theirs = nnunet_network(ours, 32, deep_supervision=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == rasd_hub.model_info(name)["num_params"]
    assert ours.rasd_config["head"] == "decoder.seg_layers"


def test_resencl_3d_is_nnssls_pretraining_layout():
    with torch.device("meta"):
        args = rasd_hub.create_model("rasd3d_resencl").dynamic_network_kwargs()
    assert args["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert args["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    assert args["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert args["norm_op"].endswith("InstanceNorm3d") and args["nonlin"].endswith("LeakyReLU")


def test_embedding_is_the_full_resolution_decoder_output():
    model = rasd_hub.create_model("rasd2d_resenc_small").eval()
    assert model.rasd_config["model_args"]["deep_supervision"] is False
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 32, 64, 64)


def test_weights_load_into_nnunets_network_with_deep_supervision(tmp_path):
    """Fine-tuning path: every stage's segmentation layer is replaced, the rest carried over."""
    model = rasd_hub.create_model("rasd3d_resenc_small")
    net = nnunet_network(model, 3, deep_supervision=True)
    body = {k: v for k, v in model.state_dict().items() if ".seg_layers." not in k}
    result = net.load_state_dict(body, strict=False)
    assert result.unexpected_keys == [] and all(".seg_layers." in k for k in result.missing_keys)
    assert len(net.decoder.seg_layers) == 4
    outs = net.eval()(torch.rand(1, 1, 32, 32, 32))
    assert isinstance(outs, list) and [o.shape[1] for o in outs] == [3] * 4


def test_save_stores_each_shared_tensor_once_and_reloads_exactly(tmp_path):
    model = rasd_hub.create_model("rasd2d_resenc_small").eval()
    state = model.state_dict()
    assert any(k.startswith("decoder.encoder.") for k in state)  # nnU-Net registers it twice
    rasd_hub.save_pretrained(model, tmp_path / "w")
    from safetensors import safe_open

    with safe_open(tmp_path / "w" / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert not any(k.startswith("decoder.encoder.") or ".all_modules." in k for k in stored)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert os.path.getsize(tmp_path / "w" / "model.safetensors") < 1.05 * nbytes
    again = rasd_hub.load(tmp_path / "w").eval()
    assert again.load_report.ok
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    encoder = rasd_hub.create_model("rasd2d_resenc_small", pretrained=tmp_path / "w", features_only=True)
    assert encoder.feature_info.channels() == [16, 32, 64, 128, 128]
    assert encoder.feature_info.reduction() == [1, 2, 4, 8, 16]
    fresh = rasd_hub.create_model("rasd2d_resenc_small", pretrained=tmp_path / "w", num_classes=4)
    assert {k.rsplit(".", 1)[0] for k in fresh.load_report.reinitialized} == {
        f"decoder.seg_layers.{i}" for i in range(4)}


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = rasd_hub.create_model("rasd2d_resenc_small")
    x = torch.rand(2, 1, 32, 32)
    model(x).square().mean().backward()
    # deep supervision is off: the coarser stages' segmentation layers get no gradient
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(plain) > 100
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).square().mean().backward()
    again = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert again.keys() == plain.keys()
    assert all(torch.allclose(plain[n], again[n], atol=1e-6) for n in plain)


def test_layout_errors_name_the_field():
    with pytest.raises(rasd_hub.errors.RasdValueError, match="n_blocks_per_stage needs one value per stage"):
        rasd_hub.create_model("rasd2d_resenc_small", n_blocks_per_stage=[1, 2])
    with pytest.raises(rasd_hub.errors.RasdValueError, match="n_conv_per_stage_decoder needs 4"):
        rasd_hub.create_model("rasd2d_resenc_small", n_conv_per_stage_decoder=[1])


# ----------------------------------------------------------------------------------- nnssl


def test_nnssl_export_loads_strictly_into_nnunets_network_from_its_plan(tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    model = rasd_hub.create_model("rasd3d_resenc_small").eval()
    path = write_nnssl_checkpoint(model, tmp_path / "rasd.pth", provenance={"size": [32, 32, 32]})
    ckpt = torch.load(path, weights_only=True)  # plain containers and tensors only
    plan = ckpt["nnssl_adaptation_plan"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "ResidualEncoderUNet"
    assert plan["pretrain_num_input_channels"] == 1 and plan["recommended_downstream_patchsize"] == [32, 32, 32]
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stem"
    config = plan["pretrain_plan"]["configurations"]["onemmiso"]
    assert config["normalization_schemes"] == ["RescaleTo01Normalization"]  # minmax [0, 1]
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet." + arch["arch_class_name"],
                                 arch["arch_kwargs"], arch["arch_kwargs_requiring_import"], 1, 32,
                                 deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model(x))
    for k in plan["keys_to_in_proj"]:
        assert k + ".weight" in ckpt["network_weights"]


def test_nnssl_round_trip_through_convert_keeps_weights_and_normalization(tmp_path):
    model = rasd_hub.create_model("rasd3d_resenc_small").eval()
    rasd_hub.set_normalization(model, dict(model.rasd_config["normalization"], mean=0.4, std=0.2))
    path = write_nnssl_checkpoint(model, tmp_path / "rasd.pth")
    out = convert_nnssl(path, tmp_path / "back")
    again = rasd_hub.load(out).eval()
    assert again.rasd_config["normalization"]["mean"] == 0.4
    assert rasd_hub.weights.read_config(out)["provenance"]["source_sha256"]
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def _foreign_checkpoint(tmp_path, **changes):
    """An nnssl checkpoint as nnssl writes it (no rasd block), z-score pre-training."""
    model = rasd_hub.create_model("rasd3d_resenc_small", out_channels=5)
    path = write_nnssl_checkpoint(model, tmp_path / "x.pth")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["rasd"]
    ckpt["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"][
        "normalization_schemes"] = ["ZScoreNormalization"]
    for key, value in changes.items():
        ckpt["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"][key] = value
    torch.save(ckpt, path)
    return model, path


def test_foreign_nnssl_checkpoint_imports_with_its_own_normalization(tmp_path):
    model, path = _foreign_checkpoint(tmp_path)
    imported, provenance = read_nnssl_checkpoint(path)
    assert imported.rasd_config["normalization"]["method"] == "zscore"
    assert imported.rasd_config["out_channels"] == 5 and provenance["source_file"] == "x.pth"


@pytest.mark.parametrize("field,value,message", [
    ("norm_op", "torch.nn.modules.batchnorm.BatchNorm3d", "norm_op"),
    ("conv_bias", False, "conv_bias"),
    ("strides", [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "anisotropic"),
])
def test_nnssl_plans_we_cannot_represent_are_refused_by_field(tmp_path, field, value, message):
    _, path = _foreign_checkpoint(tmp_path, **{field: value})
    with pytest.raises(WeightsFormatError, match=message):
        read_nnssl_checkpoint(path)


def test_nnssl_export_refuses_2d_and_non_resenc_models(tmp_path):
    with pytest.raises(WeightsFormatError, match="3D only"):
        write_nnssl_checkpoint(rasd_hub.create_model("rasd2d_resenc_small"), tmp_path / "a.pth")
    with pytest.raises(WeightsFormatError, match="not a full Residual Encoder U-Net"):
        write_nnssl_checkpoint(rasd_hub.create_model("rasd3d_small"), tmp_path / "b.pth")
    assert not list(tmp_path.iterdir())


def test_cli_export_nnssl_and_convert_back(tmp_path):
    """`rasd pretrain` (2 steps) -> `rasd hub export --format nnssl` -> `rasd hub convert`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def rasd(*args):
        proc = subprocess.run([sys.executable, "-c", "import sys, rasd_hub.cli; sys.exit(rasd_hub.cli.main())", *args], capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "pretraining", "--preset", "rasd3d_resenc_small", "--steps", "2",
                    "--batch-size", "1", "--checkpoint-every", "2", "--out", str(run), "--no-preview",
                    "--no-export", "--no-progress"], check=True, capture_output=True, env=env)
    ckpt = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    rasd("hub", "export", str(ckpt), str(tmp_path / "r.pth"), "--format", "nnssl")
    plan = torch.load(tmp_path / "r.pth", weights_only=True)["nnssl_adaptation_plan"]
    assert plan["recommended_downstream_patchsize"] == [32, 32, 32]  # the preset's synthetic size
    assert "converted nnssl checkpoint" in rasd("hub", "convert", str(tmp_path / "r.pth"), str(tmp_path / "w"))
    assert rasd_hub.load(tmp_path / "w").rasd_config["architecture"] == "rasd3d_resencl"


def test_cli_exports_shipped_weights_to_nnssl_with_nnunets_citation_shape(tmp_path, capsys):
    """`rasd hub export NAME OUT.pth --format nnssl` takes weights rasd_hub loads (here the shipped
    3D ResEnc); citations have the fields nnU-Net's PretrainedTrainer prints, and the user is told
    that nnU-Net's nnssl path z-scores inputs these min-max weights were not pre-trained on."""
    from rasd_hub.cli import main

    assert main(["hub", "export", "rasd3d_resenc_small", str(tmp_path / "s.pth"), "--format", "nnssl"]) == 0
    said = capsys.readouterr().out
    assert "z-scores every channel" in said and "mean 0.4106" in said
    ckpt = torch.load(tmp_path / "s.pth", weights_only=True)
    (citation,) = ckpt["citations"]
    assert {"type", "name", "apa_citations"} <= set(citation) and citation["apa_citations"][0].startswith("RaSD")
    assert ckpt["nnssl_adaptation_plan"]["recommended_downstream_patchsize"] == [32, 32, 32]
    shipped = rasd_hub.load("rasd3d_resenc_small").state_dict()
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in shipped.items())
