"""The registered pretrained tags: where each ``arch.tag``'s weights are, and what they are.

A tag exists only for weights the project has actually produced or converted: no placeholders.
Sources, in priority order: ``file`` (a weights directory shipped inside the rasd_hub package),
``path`` (a local weights directory, e.g. one installed with ``rasd hub install``), ``hf_hub_id``
(a Hub repo pinned to a commit). Every tag pins the sha256 of each file it reads
(``model.safetensors`` and ``config.json``). The first tag registered for an architecture is its
default. Imported by ``rasd_hub.models`` after the architectures are registered.
"""

from __future__ import annotations

from rasd_hub._install import installed_tags
from rasd_hub._pretrained import PretrainedCfg
from rasd_hub._registry import (
    default_tag, get_pretrained_cfg, how_to_get_weights, list_pretrained, register_pretrained,
)

__all__ = ["PretrainedCfg", "register_pretrained", "get_pretrained_cfg", "list_pretrained",
           "default_tag", "how_to_get_weights"]

# -- registered weights ------------------------------------------------------------------------
# A tag is added here only together with weights that exist (no placeholders;
# tests/test_models.py::test_no_placeholder_pretrained_tags checks each one). Files inside the
# package need the package-data pattern in pyproject.toml.

# v2 is registered first: the default of rasd2d_small (issue 12's validation study chose its recipe)
register_pretrained(PretrainedCfg(
    architecture="rasd2d_small",
    tag="v2_synth10k_cpu",
    file="pretrained_weights/rasd2d_small.v2_synth10k_cpu",
    sha256={"model.safetensors": "8c8c32b48a72c9c6b9710555febd2bed82407d6db5a1c0be7ff3a93029238784",
            "config.json": "d17ab6fb2b7126d1a04bb2d8fb3a870b159fa0edbe2431c8d5773260c36036bb"},
    description="v2: 10k PDL steps on synthetic 64x64 images (paper synthesis, normalised PDL "
                "embeddings), 2-vCPU CPU, 20 min; shipped in the package",
    provenance={"preset": "rasd2d_small_v2", "steps": 10_000, "batch_size": 8, "seed": 0,
                "synthesis": "paper", "pdl_normalize": True, "device": "cpu (2 vCPUs)",
                "wall_seconds": 1179.3,
                "command": "rasd pretrain --preset rasd2d_small --steps 10000 --checkpoint-every "
                           "1000 --seed 0 --device cpu --synthesis paper --pdl-normalize",
                "code_version": "rasd-hub 0.1.0"},
))

register_pretrained(PretrainedCfg(
    architecture="rasd2d_small",
    tag="synth10k_cpu",
    file="pretrained_weights/rasd2d_small.synth10k_cpu",
    sha256={"model.safetensors": "6ecadef9c455ea8abbf21b1c48d5b376fcab7b24aa2076802eeb7fe392250dc4",
            "config.json": "4b87938f122a5edfe0689cfd0ab7761665068d33aad842e1ef6069c3f1b59e73"},
    description="10k PDL steps on synthetic 64x64 images (official synthesis), 2-vCPU CPU, 15 min; "
                "shipped in the package",
    provenance={"preset": "rasd2d_small", "steps": 10_000, "batch_size": 8, "seed": 0,
                "device": "cpu (2 vCPUs)", "wall_seconds": 873.4, "code_version": "rasd-hub 0.1.0"},
))

register_pretrained(PretrainedCfg(
    architecture="rasd3d_small",
    tag="synth2300_h200",
    file="pretrained_weights/rasd3d_small.synth2300_h200",
    sha256={"model.safetensors": "af83810931c34a44e3bf47481c6cd2556e907888d33981c3015f3c34cb15efcf",
            "config.json": "3ffeeeec61f2eced9273b8f9eff25a32cdccf9467f3d7fbb68678db3cd538bfa"},
    description="2,300 PDL steps on synthetic 64^3 volumes (official synthesis, 6 classes, batch 8), "
                "one H200, 142 s; shipped in the package",
    provenance={"preset": "rasd3d_small", "steps": 2_300, "batch_size": 8, "size": 64,
                "num_classes": 6, "seed": 0, "device": "cuda (NVIDIA H200)", "precision": "bf16",
                "wall_seconds": 141.9, "code_version": "rasd-hub 0.1.0"},
))

register_pretrained(PretrainedCfg(
    architecture="rasd2d_resenc_small",
    tag="synth3000_cpu",
    file="pretrained_weights/rasd2d_resenc_small.synth3000_cpu",
    sha256={"model.safetensors": "2b878c85bb0c3d492ab08a066c60525dd6e2797a8637f0c108ca756b3192cc81",
            "config.json": "f8ac2f7101746dc8edea660750cd8b4db5e3448a7eb88d4074c2d5024e304398"},
    description="3k PDL steps on synthetic 64x64 images (official synthesis, 6 classes, batch 8), "
                "2-vCPU CPU shared with other jobs, 25 min; shipped in the package",
    provenance={"preset": "rasd2d_resenc_small", "steps": 3_000, "batch_size": 8, "seed": 0,
                "device": "cpu (2 vCPUs, shared)", "wall_seconds": 1497.7,
                "command": "rasd pretrain --preset rasd2d_resenc_small --steps 3000 "
                           "--checkpoint-every 500 --seed 0",
                "code_version": "rasd-hub 0.1.0"},
))

register_pretrained(PretrainedCfg(
    architecture="rasd3d_resenc_small",
    tag="synth2000_cpu",
    file="pretrained_weights/rasd3d_resenc_small.synth2000_cpu",
    sha256={"model.safetensors": "8c563c6c00e2d188950abf58ac1318ef362d07fae38c99457284b3ec445b95cb",
            "config.json": "6e0ba79fc10b12c438900cefb61a1f4635fba7632e8971a0bcb4bfdaca11ef92"},
    description="2k PDL steps on synthetic 32^3 volumes (official synthesis, 4 classes, batch 2), "
                "2-vCPU CPU shared with other jobs, 23 min; shipped in the package",
    provenance={"preset": "rasd3d_resenc_small", "steps": 2_000, "batch_size": 2, "size": 32,
                "num_classes": 4, "seed": 0, "device": "cpu (2 vCPUs, shared)",
                "wall_seconds": 1355.4,
                "command": "rasd pretrain --preset rasd3d_resenc_small --steps 2000 "
                           "--checkpoint-every 250 --seed 0",
                "code_version": "rasd-hub 0.1.0"},
))

# weights installed on this machine with `rasd hub install` / `rasd hub convert --install`, pinned
# by the sha256 of their files when they were installed; registered after the shipped tags, so an
# installed tag is the default only of an architecture that ships none (rasd3d_swinb, rasd2d)
for _cfg in installed_tags():
    register_pretrained(_cfg, replace=True)
