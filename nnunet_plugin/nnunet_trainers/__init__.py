"""The folder that ``nnUNet_extTrainer`` points at (see :mod:`nnunet_plugin.discovery`).

nnU-Net imports every module in this folder as a top-level module while it searches for a trainer
name, then drops those modules again. Keep exactly one thin module here that re-exports the real
classes from :mod:`nnunet_plugin.trainers`.
"""
