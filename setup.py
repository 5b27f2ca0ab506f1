"""Build hook: install ``rasd_nnunet_plugin.pth`` so nnU-Net finds the plugin's trainers.

All metadata lives in pyproject.toml; this file only adds one file to what setuptools installs.
``nnunet_plugin/discovery.py`` explains the mechanism and why it is safe for other programs.

A ``.pth`` file works only at the top level of site-packages, which no package-data setting can
reach, so ``build_py`` writes it there:
* regular wheels (``pip install .``, ``python -m build``): into ``build_lib``, whose contents
  become the wheel's root, i.e. site-packages;
* editable wheels (``pip install -e .``, PEP 660): setuptools ignores ``build_lib`` for files
  outside packages and instead packs the directory that the ``install`` command targets, so the
  file goes there.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "rasd_nnunet_plugin.pth"
# One line, executed by the site module at every interpreter start: imports only os + a tiny module,
# and never raises (a failing .pth line would print a traceback in every Python program).
PTH_LINE = (
    "import os; exec('try:\\n import nnunet_plugin.discovery as _d; _d.register_trainer_folder()"
    "\\nexcept Exception:\\n pass')\n"
)


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = self.get_finalized_command("install").install_lib
        else:
            target_dir = self.build_lib
        self.mkpath(target_dir)
        target = os.path.join(target_dir, PTH_NAME)
        with open(target, "w", encoding="utf-8") as f:
            f.write(PTH_LINE)
        self._pth_output = target

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
