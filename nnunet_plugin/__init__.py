"""nnunet_plugin: nnU-Net v2 trainers that fine-tune networks initialised from RaSD weights.

``nnUNetv2_train DATASET CONFIG FOLD -tr RaSDTrainer`` works right after ``pip install``:
:mod:`nnunet_plugin.discovery` explains how nnU-Net finds the trainers.

Modules: ``trainers`` (the trainer classes), ``pretrained`` (``RASD_WEIGHTS`` and loading),
``network`` (the network recipe stored in nnU-Net's plans), ``normalization`` (intensity
footing), ``schedule`` (warm-up + poly), ``datasets`` (real volumes from package registries as
nnU-Net raw datasets), ``testing`` (driving nnU-Net's commands in tests and benchmarks).

This file must stay import-light (no torch, no nnunetv2): a start-up hook imports the package in
every Python process of the environment.
"""
