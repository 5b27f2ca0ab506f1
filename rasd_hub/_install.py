"""Where weights installed on this machine live, and the index that registers them as tags.

``rasd hub install DIR`` / ``rasd hub convert CKPT --install`` copy a weights folder to
``$RASD_HUB_HOME/installed/ARCH.TAG`` (default ``~/.cache/rasd_hub``) and record the sha256 of its
files in ``installed/index.json``; ``rasd_hub.pretrained`` registers each entry as a tag pinned to
those hashes, so ``create_model(ARCH, pretrained=True)`` loads them offline and refuses them if
they change. Reading the index needs no torch (``import rasd_hub.pretrained`` stays light).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rasd_hub._pretrained import PretrainedCfg
from rasd_hub.errors import WeightsFormatError

__all__ = ["HOME_ENV", "hub_home", "installed_dir", "index_path", "read_index", "installed_tags"]

HOME_ENV = "RASD_HUB_HOME"


def hub_home() -> Path:
    """``$RASD_HUB_HOME``, else ``~/.cache/rasd_hub`` (read when called)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "rasd_hub").expanduser()


def installed_dir() -> Path:
    return hub_home() / "installed"


def index_path() -> Path:
    return installed_dir() / "index.json"


def read_index() -> dict[str, dict]:
    """``{"ARCH.TAG": {architecture, tag, path, sha256, provenance, ...}}`` ({} if none)."""
    path = index_path()
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise WeightsFormatError(f"{path} is not valid JSON ({err}); delete it and run "
                                 "`rasd hub install` again") from None
    if not isinstance(index, dict) or not isinstance(index.get("installed"), dict):
        raise WeightsFormatError(f"{path} is not an index written by `rasd hub install`; delete it "
                                 "and install again")
    return index["installed"]


def installed_tags() -> list[PretrainedCfg]:
    """The installed weights as pinned tags."""
    out = []
    for name, entry in sorted(read_index().items()):
        out.append(PretrainedCfg(
            architecture=entry["architecture"], tag=entry["tag"], path=entry["path"],
            sha256=entry["sha256"], license=entry.get("license", "other"),
            description=entry.get("description", f"installed from {entry.get('installed_from')}"),
            provenance=entry.get("provenance", {})))
    return out
