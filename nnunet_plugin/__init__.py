"""nnunet_plugin: RaSD networks in nnU-Net v2, the nnU-Net way: plans, then trainers.

``rasd nnunet plan -d D --weights W`` writes RaSD plans beside nnU-Net's own;
``nnUNetv2_train D CFG FOLD -p RaSDPlans -tr RaSDTrainer`` fine-tunes what they name, and every
other nnU-Net command (``--c``, ``--val``, ``nnUNetv2_predict``, model zips) works on the result.
:mod:`nnunet_plugin.discovery` explains how nnU-Net finds the trainers.

Modules: ``planning`` (the plans: network, patch, batch, weights identity), ``network`` (the
network the plans describe), ``pretrained`` (which weights a fold starts from), ``trainers``,
``normalization`` (intensity footing), ``schedule`` (warm-up + poly), ``datasets`` (real data from
package registries and the shipped tiles, as nnU-Net raw datasets), ``commands`` (driving
nnU-Net's commands), ``demo`` (the nnU-Net stage of ``rasd demo``), ``cli`` and ``bench`` (the
``rasd nnunet`` / ``rasd bench nnunet`` commands), ``evaluation`` (``rasd eval``).

This file must stay import-light (no torch, no nnunetv2): a start-up hook imports the package in
every Python process of the environment.
"""
