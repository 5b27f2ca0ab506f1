"""The last link of ``rasd demo``: fine-tune pre-trained weights in nnU-Net and predict, on real data.

With no network: the nuclei tiles shipped in the package become an nnU-Net raw dataset
(:func:`nnunet_plugin.datasets.build_nuclei_tiles`), and nnU-Net's own commands do the rest, each
in its own process exactly as a user types them::

    nnUNetv2_plan_and_preprocess -d 506 -c 2d
    rasd nnunet plan -d 506 --weights WEIGHTS
    nnUNetv2_train 506 2d 0 -p RaSDPlans -tr RaSDTrainerSmall_20epochs_cpu -device cpu
    nnUNetv2_predict -i imagesTs -o predictions -d 506 -c 2d -f 0 -p RaSDPlans -tr ...

then nnU-Net's ``compute_metrics`` scores the test tiles and ``pictures/`` shows input | reference
| prediction per tile.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEMO_DATASET", "DEMO_TRAINER", "NnunetDemo", "finetune_and_predict"]

DEMO_DATASET = 506
DEMO_TRAINER = "RaSDTrainerSmall_20epochs_cpu"
TIMEOUT = 3600  # seconds per nnU-Net command


@dataclass
class NnunetDemo:
    """What the nnU-Net part of the demo produced."""

    dice: dict[str, float]  # test case -> Dice of the nucleus class (nnU-Net's compute_metrics)
    pictures: list[Path]
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_dice(self) -> float:
        return sum(self.dice.values()) / len(self.dice)


def finetune_and_predict(weights: str | Path, out: str | Path, trainer: str = DEMO_TRAINER) -> NnunetDemo:
    """Plan, fine-tune ``weights`` (a rasd_hub weights folder or name) and predict under ``out``
    (``raw/``, ``preprocessed/``, ``results/``, ``predictions/``, ``pictures/``, ``commands.txt``)."""
    import numpy as np
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_plugin.commands import nnunet_environment, plan_and_preprocess, rasd_plan, run_nnunet
    from nnunet_plugin.datasets import build_nuclei_tiles
    from nnunet_plugin.evaluation.data import Case
    from nnunet_plugin.evaluation.pictures import write_prediction_panels
    from rasd_hub._io import write_text_atomic

    started = time.perf_counter()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # a rerun starts over; the folder is the demo's own
    env = nnunet_environment(out)
    raw = build_nuclei_tiles(env["nnUNet_raw"], DEMO_DATASET)
    did = str(DEMO_DATASET)
    commands = [f"nnUNetv2_plan_and_preprocess -d {did} -c 2d",
                f"rasd nnunet plan -d {did} --weights {weights}",
                f"nnUNetv2_train {did} 2d 0 -p RaSDPlans -tr {trainer} -device cpu",
                f"nnUNetv2_predict -i {raw / 'imagesTs'} -o {out / 'predictions'} -d {did} -c 2d "
                f"-f 0 -p RaSDPlans -tr {trainer} -device cpu"]
    write_text_atomic(out / "commands.txt", "\n".join(commands) + "\n")
    plan_and_preprocess(DEMO_DATASET, env, verify=False)
    rasd_plan(DEMO_DATASET, env, weights)
    # minutes on an idle 2-core machine; a busy one may take much longer, which is no error
    run_nnunet(["nnUNetv2_train", did, "2d", "0", "-p", "RaSDPlans", "-tr", trainer, "-device", "cpu"],
               env, log=out / "train.log", timeout=TIMEOUT)
    run_nnunet(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out / "predictions"),
                "-d", did, "-c", "2d", "-f", "0", "-p", "RaSDPlans", "-tr", trainer, "-device", "cpu",
                "--disable_progress_bar", "-npp", "1", "-nps", "1"], env, log=out / "predict.log",
               timeout=TIMEOUT)

    reader = SimpleITKIO()
    dice, cases, predictions = {}, [], {}
    for reference in sorted((raw / "labelsTs").glob("*.nii.gz")):
        case_id = reference.name[: -len(".nii.gz")]
        prediction = out / "predictions" / reference.name
        metrics = compute_metrics(str(reference), str(prediction), reader, [1])
        dice[case_id] = float(metrics["metrics"][1]["Dice"])
        # nnU-Net reads a 2D case as (channels, 1, y, x)
        image = reader.read_images([str(raw / "imagesTs" / f"{case_id}_0000.nii.gz")])[0][:, 0]
        label = reader.read_seg(str(reference))[0][0, 0]
        cases.append(Case(case_id, np.asarray(image, np.float32), label.astype(np.int64)))
        predictions[case_id] = reader.read_seg(str(prediction))[0][0, 0].astype(np.int64)
    pictures = write_prediction_panels(out / "pictures", cases, {"nnU-Net": predictions},
                                       titles={"nnU-Net": "RaSD in nnU-Net"}, scores={"nnU-Net": dice})
    return NnunetDemo(dice, pictures, commands, time.perf_counter() - started)
