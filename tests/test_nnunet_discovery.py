"""nnU-Net finds the plugin's trainers with no manual step (the installed .pth file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from nnunet_plugin import discovery

REPO = Path(__file__).resolve().parents[1]
PTH_NAME = "rasd_nnunet_plugin.pth"


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != discovery.ENV_VAR}
    env.update(extra)
    return env


def _python(code: str, env: dict, cwd=None, flags=()) -> str:
    proc = subprocess.run([sys.executable, *flags, "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# ------------------------------------------------------------------ the search-path logic

def test_folder_is_appended_to_an_unset_variable():
    assert discovery.extend_search_path(None) == discovery.TRAINER_FOLDER
    assert discovery.extend_search_path("") == discovery.TRAINER_FOLDER


def test_users_own_folders_keep_their_place_and_come_first():
    user = os.pathsep.join(["/my/trainers", "/team/trainers"])
    value = discovery.extend_search_path(user)
    assert value.split(os.pathsep) == ["/my/trainers", "/team/trainers", discovery.TRAINER_FOLDER]


def test_registering_twice_does_not_grow_the_variable():
    env = {discovery.ENV_VAR: "/my/trainers"}
    discovery.register_trainer_folder(env)
    once = env[discovery.ENV_VAR]
    discovery.register_trainer_folder(env)  # e.g. a child process inheriting the value
    assert env[discovery.ENV_VAR] == once


def test_trainer_folder_holds_one_thin_module():
    modules = sorted(p.name for p in Path(discovery.TRAINER_FOLDER).glob("*.py"))
    assert modules == ["__init__.py", "rasd_nnunet_trainers.py"]


# ------------------------------------------------------------------ the installed environment

def test_pth_file_is_installed_in_this_environment():
    # README's install command (pip install -e .) must have put it into site-packages.
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / PTH_NAME).is_file(), (
        f"{PTH_NAME} missing from {site}: re-run `pip install -e .` (setup.py installs it)")


def test_a_fresh_interpreter_sets_the_variable():
    assert _python("import os; print(os.environ['nnUNet_extTrainer'])", _clean_env()) == \
        discovery.TRAINER_FOLDER


def test_a_fresh_interpreter_appends_to_the_users_value():
    out = _python("import os; print(os.environ['nnUNet_extTrainer'])",
                  _clean_env(nnUNet_extTrainer="/my/trainers"))
    assert out.split(os.pathsep) == ["/my/trainers", discovery.TRAINER_FOLDER]


def test_start_up_imports_nothing_heavy_and_stays_fast():
    # The .pth line runs in every Python program of the environment.
    code = "import sys; print(sorted(m for m in ('torch', 'numpy', 'nnunetv2', 'rasd_hub') if m in sys.modules))"
    assert _python(code, _clean_env()) == "[]"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.rstrip().endswith("nnunet_plugin.discovery")]
    assert lines, "nnunet_plugin.discovery was not imported at start-up"
    cumulative_us = int(lines[0].split("|")[1])
    assert cumulative_us < 20_000, f"discovery import took {cumulative_us} us at start-up"


def test_nnunet_finds_every_trainer_by_name():
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "import nnunet_plugin.trainers as t\n"
            "for n in t.__all__:\n"
            "    if n.startswith('RaSD'): assert f(n) is getattr(t, n), n\n"
            "print('ok')")
    assert _python(code, _clean_env()).endswith("ok")


# ------------------------------------------------------------------ what a wheel installs

def _copy_sources(dst: Path) -> Path:
    """The files a build reads (a copy, so building leaves no build/ or egg-info in the repo)."""
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for pkg in ("rasd_hub", "pretraining", "nnunet_plugin"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.fixture(scope="module")
def built_wheels(tmp_path_factory):
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    # The PEP 517/660 hooks pip calls (no build isolation: no index needed).
    _python("import sys; from setuptools import build_meta as b; "
            f"b.build_wheel({str(out)!r}); b.build_editable({str(out)!r})", _clean_env(), cwd=src)
    wheels = {("editable" if ".editable" in p.name else "regular"): p for p in out.glob("*.whl")}
    assert set(wheels) == {"editable", "regular"}, list(out.iterdir())
    return wheels


@pytest.mark.parametrize("kind", ["regular", "editable"])
def test_wheels_install_the_pth_file_at_site_packages_level(built_wheels, kind):
    with zipfile.ZipFile(built_wheels[kind]) as zf:
        names = zf.namelist()
        assert PTH_NAME in names  # top level of the wheel = site-packages
        line = zf.read(PTH_NAME).decode()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert line.startswith("import ") and line.count("\n") == 1  # site executes lines starting with import
    assert "register_trainer_folder" in line and "except Exception" in line
    assert PTH_NAME in record  # so `pip uninstall` removes it again


def test_regular_wheel_ships_the_trainer_folder(built_wheels):
    with zipfile.ZipFile(built_wheels["regular"]) as zf:
        names = set(zf.namelist())
    assert "nnunet_plugin/nnunet_trainers/rasd_nnunet_trainers.py" in names
    assert "nnunet_plugin/trainers.py" in names


@pytest.mark.slow
def test_an_unpacked_wheel_makes_nnunet_find_the_trainer(built_wheels, tmp_path):
    """A wheel install without a venv: unpack the wheel as a site directory, start Python without
    the environment's own site hooks, add the wheel first, then this environment's packages."""
    site_dir = tmp_path / "site-packages"
    with zipfile.ZipFile(built_wheels["regular"]) as zf:
        zf.extractall(site_dir)
    env_site = sysconfig.get_paths()["purelib"]
    code = (
        "import os, site, inspect\n"
        f"site.addsitedir({str(site_dir)!r})\n"          # runs the wheel's .pth
        "wheel_value = os.environ['nnUNet_extTrainer']\n"
        f"site.addsitedir({env_site!r})\n"               # torch, nnunetv2, ...
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
        "cls = f('RaSDTrainer')\n"
        "print(wheel_value); print(inspect.getfile(cls))"
    )
    out = _python(code, _clean_env(), cwd=tmp_path, flags=("-S",)).splitlines()
    assert out[-2] == str(site_dir / "nnunet_plugin" / "nnunet_trainers")
    assert out[-1].startswith(str(site_dir))


@pytest.mark.slow
@pytest.mark.parametrize("editable", [True, False], ids=["pip-install-e", "pip-install"])
def test_fresh_venv_install_registers_and_uninstall_unregisters(tmp_path, editable):
    """README's install command in a fresh venv (``--no-deps`` keeps it small: the hook needs only
    ``os``). pip builds with isolation, fetching setuptools from the index as a user's pip does."""
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    install = [py, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    proc = subprocess.run(install + (["-e", str(src)] if editable else [str(src)]),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    show = "import os; print(os.environ.get('nnUNet_extTrainer'))"
    value = subprocess.run([py, "-c", show], env=_clean_env(), capture_output=True, text=True,
                           timeout=60).stdout.strip()
    if editable:
        expected = src / "nnunet_plugin" / "nnunet_trainers"
    else:
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        expected = Path(site) / "nnunet_plugin" / "nnunet_trainers"
    assert Path(value) == expected and expected.is_dir()

    subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "rasd-hub"], check=True, timeout=300)
    after = subprocess.run([py, "-c", show], env=_clean_env(), capture_output=True, text=True,
                           timeout=60)
    assert after.returncode == 0 and after.stdout.strip() == "None" and not after.stderr
