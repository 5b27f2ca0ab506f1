"""Make ``nnUNetv2_train -tr RaSDTrainer`` find this package's trainers with no manual step.

nnU-Net 2.8 looks up ``-tr NAME`` among its own trainers and then in the folders listed in the
environment variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). It reads no entry points.
This distribution therefore installs a one-line ``rasd_nnunet_plugin.pth`` file into
site-packages (see ``setup.py``). Python executes that line once at interpreter start-up; it calls
:func:`register_trainer_folder`, which appends :data:`TRAINER_FOLDER` to ``nnUNet_extTrainer``.

Why this is safe for every other Python program in the environment:

* it imports nothing beyond ``os`` (this module and the package ``__init__`` stay import-light:
  keep it that way), so start-up cost is a fraction of a millisecond;
* a value the user set keeps its place: our folder is appended, and only once, so child processes
  (multi-GPU ``-num_gpus`` spawns, data-loader workers) do not grow the variable;
* the folder holds a single thin module, so nnU-Net's search imports nothing else;
* any failure is swallowed by the ``.pth`` line: a broken install must not print a traceback at
  every Python start. The symptom is then nnU-Net's "Could not find requested nnunet trainer";
  ``python -m nnunet_plugin.discovery`` prints the folder to set by hand.
"""

from __future__ import annotations

import os

ENV_VAR = "nnUNet_extTrainer"

#: The folder nnU-Net searches. It is a real folder inside the installed package, so the same code
#: works for wheel installs (site-packages) and editable installs (the source tree).
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_trainers")


def extend_search_path(current: str | None, folder: str = TRAINER_FOLDER) -> str:
    """Return ``current`` with ``folder`` appended (``os.pathsep``-separated), without duplicates."""
    entries = [p for p in (current or "").split(os.pathsep) if p.strip()]
    normalised = {os.path.normcase(os.path.abspath(p)) for p in entries}
    if os.path.normcase(os.path.abspath(folder)) not in normalised:
        entries.append(folder)
    return os.pathsep.join(entries)


def register_trainer_folder(environ=os.environ) -> str:
    """Append :data:`TRAINER_FOLDER` to ``nnUNet_extTrainer`` in ``environ``; return the new value."""
    environ[ENV_VAR] = extend_search_path(environ.get(ENV_VAR))
    return environ[ENV_VAR]


if __name__ == "__main__":  # pragma: no cover - a diagnostic for users
    print(TRAINER_FOLDER)
