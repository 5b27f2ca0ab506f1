"""Shared pytest fixtures.

The local Hub server speaks plain HTTP + LFS, not Xet, so Xet is disabled before any test imports
huggingface_hub (which reads the variable once at import).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# weights a developer installed (`rasd hub install`) must not change what the tests see: an empty
# home of their own (read when rasd_hub.pretrained is imported; tests that install set their own)
import tempfile  # noqa: E402

os.environ["RASD_HUB_HOME"] = tempfile.mkdtemp(prefix="rasd-hub-home-")

import pytest  # noqa: E402


@pytest.fixture
def hub_server():
    """A local Hugging Face Hub (tests/hub_server.py) on 127.0.0.1; ``.url`` is its endpoint.

    ``.state.log`` records the endpoints hit, ``.state.faults`` injects failures, ``.stop()``
    takes it down mid-test.
    """
    from hub_server import LocalHub

    hub = LocalHub().start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hub cache directory; HF_HOME points into tmp so no test touches ~/.cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return cache
