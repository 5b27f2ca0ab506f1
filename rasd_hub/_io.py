"""The project's one way to write files and folders so that nothing half-written is ever seen.

* :func:`atomic_path` / :func:`write_text_atomic` / :func:`write_json_atomic`: a file is written to
  a temporary name in the same directory, fsync'd, renamed over the final name, and the directory
  is fsync'd, so after a crash, a ``kill -9`` or a full disk the final name holds the old content
  or the new one, never a truncated file.
* :func:`atomic_dir`: a folder (e.g. a weights folder of several files that belong together) is
  written beside its final name and then swapped into place in one step, so a reader sees the old
  folder or the new one, never new weights with an old ``config.json``.

Temporary names start with ``.tmp-`` and end with the final name (so libraries that choose a format
by extension, e.g. PIL or nibabel, still work); :func:`remove_stale_temporaries` clears what a
killed writer left behind, for callers that know they are the only writer of a directory.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["atomic_path", "atomic_dir", "write_text_atomic", "write_json_atomic", "fsync_dir",
           "remove_stale_temporaries", "sha256_file", "TEMP_PREFIX"]

_CHUNK = 8 << 20
TEMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create owner-only entries; published files and folders should get the
# permissions an ordinary open()/mkdir() would give them (e.g. readable by a lab's group)
_UMASK = _umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make renames inside ``directory`` durable. Not possible on every platform or file system
    (e.g. Windows); skipping it there only weakens durability, never atomicity."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write; if the block succeeds the
    file is fsync'd and renamed onto ``path`` and the directory fsync'd. On any error (also a full
    disk) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------ folders

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux's ``renameat2(RENAME_EXCHANGE)`` (through ctypes:
    the os module does not offer it). False where the C library, the kernel or the file system
    lacks it; the caller then falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _publish_dir(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target`` (replacing an existing one)."""
    for root, _dirs, files in os.walk(staging):
        for name in files:
            _fsync_file(os.path.join(root, name))
        fsync_dir(root)
    os.chmod(staging, _DIR_MODE)
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)
            fsync_dir(target.parent)
            return
        except OSError as err:  # created meanwhile by someone else: replace it below
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if _exchange(staging, target):
        _remove(staging)  # now holds the previous folder
    else:
        # Fallback (no renameat2): move the old folder aside, then the new one in. A reader in
        # between finds no folder at all (an error, never a mix of old and new files); a crash in
        # between leaves the previous folder under a hidden .tmp- name beside the target.
        old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=f"-{target.name}.old",
                                    dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(staging, target)
        _remove(old)
    fsync_dir(target.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike, replaceable: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``path`` for the block to fill; if the block succeeds the
    folder's files are fsync'd and the folder takes ``path``'s place in one step (an existing
    folder is swapped out and deleted). On any error the new folder is removed and ``path`` is
    left as it was.

    ``replaceable``: the only names an existing ``path`` may hold (hidden temporaries aside);
    anything else there is refused up front, since replacing the folder would delete it.
    """
    path = Path(os.path.abspath(path))  # "." or "a/.." must name the folder, not its contents
    if os.path.lexists(path):
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a folder", str(path))
        if replaceable is not None:
            allowed = set(replaceable)
            foreign = sorted(p.name for p in path.iterdir()
                             if p.name not in allowed and not p.name.startswith("."))
            if foreign:
                raise FileExistsError(
                    errno.EEXIST, f"{path} holds other files ({', '.join(foreign[:5])}) that "
                    "replacing it would delete; write to a new or empty folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=f"-{path.name}", dir=path.parent))
    try:
        yield staging
        _publish_dir(staging, path)
    except BaseException:
        _remove(staging)
        raise


def remove_stale_temporaries(directory: str | os.PathLike, patterns: Iterable[str] = ()) -> list[Path]:
    """Delete the ``.tmp-*`` entries (and those matching ``patterns``) that killed writers left in
    ``directory``. Only for a caller that is the sole writer there (e.g. the runner in its OUT
    folder): another writer's work in progress would be deleted too. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for pattern in (f"{TEMP_PREFIX}*", *patterns):
        for entry in directory.glob(pattern):
            _remove(entry)
            removed.append(entry)
    return removed


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
