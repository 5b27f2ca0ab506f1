"""`rasd synth` and `rasd bench synth`: files, formats, preview, and clean refusals."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from rasd_hub.cli import main


def test_synth_2d_writes_png_pairs_preview_and_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synth", "--dim", "2", "--size", "64", "48", "--classes", "5", "--num", "3",
                 "--out", str(out), "--seed", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "preview.png"] + [f"synth_{i:04d}_{kind}.png" for i in range(3)
                                                       for kind in ("image", "label")]
    label = np.asarray(Image.open(out / "synth_0002_label.png"))
    assert label.shape == (64, 48) and label.dtype == np.uint8 and label.max() < 5
    width, height = Image.open(out / "preview.png").size
    assert width > 2 * 100 and height > 3 * 150  # image | label, one row per sample
    assert json.loads((out / "config.json").read_text())["config"]["num_classes"] == 5
    assert "wrote 3 PNG" in capsys.readouterr().out


def test_synth_3d_non_cubic_writes_nifti_pairs(tmp_path):
    out = tmp_path / "vols"
    assert main(["synth", "--dim", "3", "--size", "40", "32", "24", "--num", "3", "--out", str(out),
                 "--preset", "paper", "--batch-size", "2"]) == 0
    image = nib.load(out / "synth_0002_image.nii.gz")
    label = nib.load(out / "synth_0002_label.nii.gz")
    assert image.shape == label.shape == (40, 32, 24)
    assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
    assert np.asarray(label.dataobj).max() < 8
    assert Image.open(out / "preview.png").size[1] > 3 * 150  # one row per sample


@pytest.mark.parametrize("arguments, message", [
    (["--classes", "1"], "at least two classes"),
    (["--size", "20", "64"], "too small for the coarsest noise scale"),
    (["--num", "0"], "--num must be at least 1"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, arguments, message):
    out = tmp_path / "out"
    assert main(["synth", "--dim", "2", "--size", "64", "--out", str(out), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_or_not_empty_is_refused(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    assert main(["synth", "--dim", "2", "--size", "32", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"
    assert main(["synth", "--dim", "2", "--size", "32", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_unknown_preset_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--preset", "fancy", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fancy'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_unavailable_device_is_refused(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["synth", "--dim", "2", "--size", "32", "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bench_synth_json_records(capsys):
    assert main(["bench", "synth", "--json", "--sizes", "2:64:6", "--repeats", "1", "--stats-samples", "2",
                 "--presets", "official", "paper"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["implementation"], r["preset"]) for r in records] == [
        ("rasd-hub", "official"), ("released (reference)", "official"), ("rasd-hub", "paper")]
    for record in records:
        assert {"dim", "size", "classes", "preset", "device", "batch_size", "s_per_volume",
                "threads", "load_average"} <= set(record)
        assert record["s_per_volume"] > 0 and record["classes"] == 6 and record["size"] == [64, 64]
    assert records[0]["speedup_vs_reference"] > 0
    compared = {row["statistic"] for row in records[0]["stats_vs_reference"]}
    assert compared >= {"surface_to_volume", "image_mean"}


def test_bench_synth_table(capsys):
    assert main(["bench", "synth", "--sizes", "2:32", "--repeats", "1", "--stats-samples", "2",
                 "--presets", "official"]) == 0
    out = capsys.readouterr().out
    assert "released (reference)" in out and "surface_to_volume" in out
