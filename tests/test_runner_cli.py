"""`rasd pretrain` / `python -m pretraining` argument handling and error messages."""

import subprocess
import sys

import pytest

from pretraining.cli_train import config_from_args
from pretraining.presets import PRESETS
from rasd_hub.cli import build_parser, main


def parse(*argv):
    return build_parser().parse_args(["pretrain", *argv])


def test_list_presets_shows_every_preset_with_settings(capsys):
    assert main(["pretrain", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ("rasd3d_swinb", "rasd2d", "rasd2d_small", "rasd3d_small"):
        assert name in out
    assert "128x128x128" in out and "1e-05" in out and "600000" in out


def test_paper_presets_match_the_paper():
    swinb, two_d = PRESETS["rasd3d_swinb"], PRESETS["rasd2d"]
    assert (swinb.size, swinb.spatial_dims, swinb.num_classes, swinb.batch_size, swinb.lr,
            swinb.steps) == (128, 3, 8, 2, 1e-5, 600_000)
    assert (two_d.size, two_d.spatial_dims, two_d.num_classes, two_d.batch_size) == (512, 2, 16, 16)


def test_arguments_override_the_preset(tmp_path):
    config = config_from_args(parse("--preset", "rasd2d_small", "--steps", "7", "--batch-size",
                                    "4", "--lr", "3e-4", "--size", "32", "--precision", "bf16",
                                    "--out", str(tmp_path), "--resume", "--checkpoint-every", "2",
                                    "--grad-checkpointing", "--offline"))
    assert (config.steps, config.batch_size, config.lr, config.size) == (7, 4, 3e-4, 32)
    assert config.precision == "bf16" and config.resume and config.grad_checkpointing
    assert config.checkpoint_every == 2
    assert config.offline_pool == f"{tmp_path}/offline_pool"
    default = config_from_args(parse("--preset", "rasd3d_swinb"))
    assert default.out_dir == "runs/rasd3d_swinb" and default.offline_pool is None
    assert default.synthesis == "official" and not default.pdl.normalize
    variant = config_from_args(parse("--preset", "rasd2d_small", "--synthesis", "paper", "--pdl-normalize"))
    assert variant.synthesis == "paper" and variant.pdl.normalize
    kwargs = config_from_args(parse("--preset", "rasd2d_small", "--model-kwargs", "upsample=linear",
                                    "num_res_units=1"))
    assert kwargs.model_kwargs == {"upsample": "linear", "num_res_units": 1}
    synth = config_from_args(parse("--preset", "rasd2d_small", "--synthesis-kwargs", "zscore=true",
                                   "heatmap_scales=[16,32]"))
    assert synth.synthesis_kwargs == {"zscore": True, "heatmap_scales": [16, 32]}
    built = synth.synthesis_config()
    assert built.zscore and built.heatmap_scales == (16, 32)
    # the PDL weights keep the preset's normalisation (v2's preset normalises)
    pdl = config_from_args(parse("--preset", "rasd2d_small_v2", "--pdl-clustering-weight", "0.5"))
    assert (pdl.pdl.normalize, pdl.pdl.clustering_weight, pdl.pdl.separation_weight) == (True, 0.5, 1.0)


def test_bad_model_kwargs_are_clear_errors(capsys):
    assert main(["pretrain", "--preset", "rasd2d_small", "--model-kwargs", "upsample"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--synthesis-kwargs", "zscor=true"], "unknown synthesis field 'zscor'; the fields are: "),
    (["--synthesis-kwargs", "zscore=yes"], "synthesis field 'zscore' takes true or false"),
    (["--synthesis-kwargs", "size=32"], "set by the run itself"),
    (["--synthesis-kwargs", "heatmap_scales=[64]"], "too small for the coarsest noise scale"),
    (["--pdl-separation-weight", "-1"], "PDL term weights must be non-negative"),
])
def test_bad_synthesis_and_pdl_options_are_clear_errors_before_any_step(argv, message, capsys, tmp_path):
    assert main(["pretrain", "--preset", "rasd2d_small", "--out", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_synthesis_preset_is_a_clear_error(capsys):
    assert main(["pretrain", "--preset", "rasd2d_small", "--synthesis", "papr"]) == 2
    assert "--synthesis must be one of official, paper, got 'papr'" in capsys.readouterr().err


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["pretrain", "--preset", "rasd5d"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'rasd5d'" in err and "rasd2d_small" in err


def test_missing_preset_is_a_clear_error(capsys):
    assert main(["pretrain"]) == 2
    assert "--preset is required" in capsys.readouterr().err


def test_python_dash_m_pretraining_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "pretraining", "--list-presets"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "rasd3d_small" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pretraining", "--preset", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown preset" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["pretrain"], ["demo"], ["bench", "train"]])
def test_help_describes_the_command(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert "--preset" in out or "--out" in out
