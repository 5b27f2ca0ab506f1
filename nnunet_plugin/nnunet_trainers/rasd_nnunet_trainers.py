"""Thin re-export imported by nnU-Net's ``nnUNet_extTrainer`` search (module name kept unique).

nnU-Net imports this file as a top-level module named ``rasd_nnunet_trainers``. The classes live in
:mod:`nnunet_plugin.trainers` so that they have one importable home (pickling, DDP spawns, tests).
"""

try:
    from nnunet_plugin.trainers import *  # noqa: F401,F403
except ModuleNotFoundError as exc:
    # A Python that inherited nnUNet_extTrainer from this environment but does not have
    # nnunet_plugin installed (another venv started as a child process) must still be able to use
    # its own trainers: define nothing. Any other missing module is a real error and propagates.
    if exc.name != "nnunet_plugin":
        raise
