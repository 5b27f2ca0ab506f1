"""``rasd demo``: the main job, end to end on a CPU in a minute or two, without network.

1. synthesise a batch and save ``OUT/synthetic_batch.png``;
2. pre-train a small model with PDL (``OUT/checkpoints``, ``OUT/metrics.jsonl``,
   ``OUT/preview_start.png`` / ``OUT/preview_end.png``);
3. export the weights in ``rasd_hub`` format (``OUT/export``);
4. reload them with ``rasd_hub.create_model(arch, pretrained=OUT/export)`` and check that the
   reloaded model computes exactly what the trained one does;
5. measure how well the prototype assignments of the trained model follow the label maps of fresh
   synthetic data, compared with the untrained model (``OUT/demo.json``);
6. fine-tune the exported weights in nnU-Net on real microscopy tiles shipped in the package
   (plan, ``nnUNetv2_train``, ``nnUNetv2_predict``; :mod:`nnunet_plugin.demo`) and write
   input | reference | prediction pictures (``OUT/nnunet/``).

Each stage reports ``ok``, ``failed`` (with its traceback in ``demo.json``) or ``skipped`` (a stage
it needs failed), so one broken piece does not hide how the others fare.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasd_hub._io import write_text_atomic

__all__ = ["run_demo", "DemoReport", "DEMO_STEPS"]

#: steps of the demo's pre-training run (rasd2d_small: about a minute on 2 CPU cores)
DEMO_STEPS = 120
DEMO_SIZE = 64
_MARKER = "demo.json"


@dataclass
class Stage:
    name: str
    status: str  # ok | failed | skipped (an earlier stage it needs failed)
    detail: str
    seconds: float


@dataclass
class DemoReport:
    out_dir: Path
    stages: list[Stage] = field(default_factory=list)
    wall_seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(s.status == "ok" for s in self.stages)

    def summary(self) -> str:
        lines = [f"rasd demo -> {self.out_dir}/"]
        for s in self.stages:
            lines.append(f"  [{s.status:>11}] {s.name:<10} {s.seconds:6.1f} s  {s.detail}")
        verdict = "all stages passed" if self.ok else "NOT all stages passed (see above)"
        lines.append(f"{verdict}; total {self.wall_seconds:.0f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "wall_seconds": round(self.wall_seconds, 1),
                "stages": [vars(s) for s in self.stages], **self.facts}


class _Skipped(Exception):
    """A stage cannot run because a stage it needs failed."""


def _stage(report: DemoReport, name: str, fn) -> Any:
    start = time.perf_counter()
    try:
        value, detail = fn()
        status = "ok"
    except _Skipped as err:
        value, status, detail = None, "skipped", str(err)
    except Exception as err:  # the demo reports every stage rather than stopping at the first
        value, status = None, "failed"
        detail = f"{type(err).__name__}: {err}"
        report.facts.setdefault("tracebacks", {})[name] = traceback.format_exc()
    report.stages.append(Stage(name, status, detail, round(time.perf_counter() - start, 2)))
    return value


def _clear_previous_demo(out: Path) -> None:
    """A rerun of the demo into the same folder starts over; a folder with someone else's run in
    it is left alone (the runner then refuses to overwrite its checkpoints)."""
    if (out / _MARKER).exists():
        for name in ("checkpoints", "export", "nnunet"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metrics.jsonl", "preview_start.png", "preview_end.png",
                     "synthetic_batch.png", _MARKER):
            (out / name).unlink(missing_ok=True)


def run_demo(out_dir: str | Path = "rasd-demo", preset: str = "rasd2d_small",
             steps: int | None = None, size: int | None = None, device: str = "cpu",
             progress: bool = True, nnunet_trainer: str | None = "RaSDTrainerSmall_20epochs_cpu") -> DemoReport:
    """Run the demo; never raises for a failing stage (see the report). ``nnunet_trainer`` is
    the trainer of the nnU-Net stage (None skips the stage)."""
    import torch

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_demo(out)
    report = DemoReport(out)

    from pretraining.config import TrainConfig

    config = TrainConfig.from_preset(
        preset, steps=steps or DEMO_STEPS, size=size or DEMO_SIZE, out_dir=str(out),
        device=device, checkpoint_every=max(1, (steps or DEMO_STEPS) // 2), log_every=5,
    )
    write_text_atomic(out / _MARKER, json.dumps({"running": True}))

    def synthesise():
        from pretraining import synthesis
        from pretraining.preview import save_preview

        cfg = config.synthesis_config()

        gen = torch.Generator().manual_seed(config.seed + 12345)
        image, label = synthesis.synthesize(cfg, batch_size=4, generator=gen,
                                            device=torch.device(device))
        path = save_preview(out / "synthetic_batch.png", image, label)
        return (image, label), f"{tuple(image.shape)} images + labels -> {path.name}"

    held_out = _stage(report, "synthesis", synthesise)

    def pretrain():
        if held_out is None:
            raise _Skipped("needs the synthesis engine")
        from pretraining.runner import run_pretraining

        result = run_pretraining(config, progress=progress)
        report.facts["final_loss"] = result.final_loss
        from pretraining.metrics import read_metrics

        losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("loss")]
        report.facts["first_loss"] = losses[0] if losses else None
        return result, (f"{result.step} steps of {config.preset} at {config.size}px, loss "
                        f"{losses[0]:.3f} -> {result.final_loss:.3f}, "
                        f"{result.nonfinite_steps} skipped")

    result = _stage(report, "pretrain", pretrain)

    def reload():
        if result is None or result.export_dir is None:
            raise _Skipped("needs the pre-trained export")
        import rasd_hub

        model = rasd_hub.create_model(config.architecture, pretrained=str(result.export_dir))
        also = rasd_hub.load(str(result.export_dir))
        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["model"]
        reloaded = model.state_dict()
        same = all(torch.equal(state[k].cpu(), reloaded[k].cpu()) for k in state)
        same = same and all(torch.equal(state[k].cpu(), v.cpu())
                            for k, v in also.state_dict().items() if k in state)
        if not same:
            raise RuntimeError("reloaded weights differ from the trained checkpoint")
        files = sorted(p.name for p in Path(result.export_dir).iterdir())
        return model, f"create_model(..., pretrained=export/) == checkpoint; files {files}"

    model = _stage(report, "reload", reload)

    def evaluate():
        if model is None or held_out is None:
            raise _Skipped("needs the reloaded model")
        import rasd_hub

        from pretraining.pdl import prototype_assignments

        image, label = held_out
        untrained = rasd_hub.create_model(config.architecture, in_chans=1, **config.model_kwargs)
        scores = {}
        for name, net in (("untrained", untrained), ("pretrained", model)):
            net.eval()
            with torch.no_grad():
                assigned = prototype_assignments(net(image), label, config.num_classes)
            scores[name] = float((assigned == label).float().mean())
        report.facts["assignment_agreement"] = scores
        return scores, (f"prototype assignments match the labels of unseen synthetic images: "
                        f"{scores['untrained']:.0%} untrained -> {scores['pretrained']:.0%} "
                        "pre-trained")

    _stage(report, "evaluate", evaluate)

    def finetune():
        if result is None or result.export_dir is None:
            raise _Skipped("needs the pre-trained export")
        from nnunet_plugin.demo import finetune_and_predict

        done = finetune_and_predict(result.export_dir, out / "nnunet", trainer=nnunet_trainer)
        report.facts["nnunet"] = {"dice": done.dice, "commands": done.commands,
                                  "pictures": [str(p.relative_to(out)) for p in done.pictures]}
        return done, (f"nnU-Net fine-tuned the export on {len(done.dice)} real nuclei test tiles: "
                      f"Dice {done.mean_dice:.2f}; pictures in nnunet/pictures/")

    if nnunet_trainer:
        _stage(report, "nnunet", finetune)

    previews = sorted(p.name for p in out.glob("*.png"))
    report.facts["previews"] = previews
    report.wall_seconds = time.perf_counter() - started
    write_text_atomic(out / _MARKER, json.dumps(report.to_dict(), indent=2, default=str))
    return report
