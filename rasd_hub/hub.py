"""Hugging Face Hub: verified downloads, offline use and publishing.

The Hub client checks sizes, not hashes, so every file we read from the cache is verified here:
an LFS blob is named by its sha256 and a regular file's blob by its git blob sha1, which makes
re-verification possible offline. A pinned sha256 (pretrained configs, ``config.json``'s own
record of the weights) is checked as well. On a mismatch the bad blob is deleted and downloaded
once more; a second mismatch raises :class:`ChecksumMismatchError` naming the file and both hashes.

Offline (``HF_HUB_OFFLINE=1`` or ``offline=True``) never opens a connection; a missing file raises
:class:`OfflineError` saying how to prefetch it. ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read
when called (huggingface_hub reads them once at import), and the endpoint is passed explicitly.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rasd_hub._io import sha256_file
from rasd_hub.errors import ChecksumMismatchError, HubError, OfflineError, WeightsFormatError
from rasd_hub.weights import CARD_NAME, CONFIG_NAME, WeightsSource, model_card, read_config, save_pretrained

__all__ = ["fetch_weights", "push_to_hub", "PushResult", "hub_endpoint", "is_offline",
           "verify_cached_file", "commit_of", "git_blob_sha1"]

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
FILES = ("config.json", "model.safetensors", "README.md")


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``HF_HUB_OFFLINE`` (read now, not at import)."""
    if offline is not None:
        return bool(offline)
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE


def hub_endpoint(endpoint: str | None = None) -> str:
    """``endpoint`` if given, else ``HF_ENDPOINT`` (read now), else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _cache_dir(cache_dir) -> str | None:
    if cache_dir:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_cached_file(path: str | os.PathLike, pinned_sha256: str | None = None) -> str | None:
    """Check a cached file against its blob name (sha256 or git sha1) and ``pinned_sha256``.

    Returns the file's sha256 when it was computed (LFS blob or pinned), else None. Raises
    :class:`ChecksumMismatchError` (``expected``/``actual`` set) on a mismatch.
    """
    path = Path(path)
    blob = path.resolve()
    name = blob.name
    if _HEX64.match(name) or pinned_sha256:
        actual = sha256_file(blob)
        for expected in (name if _HEX64.match(name) else None, pinned_sha256):
            if expected and actual != expected:
                raise ChecksumMismatchError(
                    f"{path.name}: sha256 {actual} does not match the expected {expected}",
                    filename=path.name, expected=expected, actual=actual)
        return actual
    if _HEX40.match(name):
        actual = git_blob_sha1(blob)
        if actual != name:
            raise ChecksumMismatchError(
                f"{path.name}: git blob sha1 {actual} does not match the expected {name}",
                filename=path.name, expected=name, actual=actual)
    return None


def _prefetch_hint(repo_id: str, revision: str | None, cache_dir) -> str:
    rev = f"@{revision}" if revision else ""
    cd = f" --cache-dir {cache_dir}" if cache_dir else ""
    return (f"On a machine with network access run `rasd hub download hf-hub:{repo_id}{rev}{cd}` "
            "and copy the cache here (or point HF_HUB_CACHE / --cache-dir at it), or load a local "
            "weights directory instead.")


def _hf_download(repo_id: str, filename: str, revision: str | None, *, offline: bool, cache_dir,
                 endpoint: str | None, force: bool = False) -> Path:
    """hf_hub_download with our error types (never touches the network when offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"hf-hub:{repo_id}@{revision or 'main'}"
    try:
        return Path(hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
            local_files_only=offline, force_download=force,
        ))
    except RepositoryNotFoundError:
        raise HubError(
            f"{where}: repository not found at {hub_endpoint(endpoint)}. Check the name, that you "
            "are logged in (`hf auth login`) for private repos, and HF_ENDPOINT for mirrors.") from None
    except RevisionNotFoundError:
        raise HubError(f"{where}: revision {revision!r} not found; use a branch, tag or commit of "
                       "the repo") from None
    except LocalEntryNotFoundError as err:
        if offline:
            raise OfflineError(
                f"{where}: {filename} is not in the local Hub cache and offline mode is on "
                f"(HF_HUB_OFFLINE=1 or offline=True). {_prefetch_hint(repo_id, revision, cache_dir)}"
            ) from None
        cause = _root_cause(err)
        raise HubError(
            f"{where}: could not download {filename} from {hub_endpoint(endpoint)} and it is not "
            f"cached ({cause}). Check the network / HF_ENDPOINT or retry later; "
            f"{_prefetch_hint(repo_id, revision, cache_dir)}") from None
    except EntryNotFoundError:
        raise WeightsFormatError(
            f"{where} has no {filename}: it is not a rasd_hub weights repo (model.safetensors, "
            "config.json, README.md). Publish one with `rasd hub push`.") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise HubError(f"{where}: the Hub answered HTTP {status} for {filename} ({_short(err)}). "
                       "Retry later, or use a cached pinned revision / local weights.") from None
    except (OSError, ValueError) as err:  # truncated or failed transfers, consistency checks
        raise HubError(f"{where}: downloading {filename} failed: {_short(err)}. Retry; a pinned "
                       "revision that is already cached loads without the network.") from None
    except Exception as err:  # httpx transport errors that escape the client's retries
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11"):
            raise HubError(f"{where}: downloading {filename} failed: {_short(err)}") from None
        raise


def _root_cause(err: BaseException) -> str:
    """The first HTTP status or transport error behind a client exception, in a few words."""
    seen = err
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            return f"HTTP {status} from the server"
        if type(seen).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11"):
            return f"{type(seen).__name__}: {_short(seen)}"
        seen = seen.__cause__ or seen.__context__
    return _short(err)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _remove_cached(path: Path) -> None:
    blob = path.resolve()
    for p in (blob, path):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _verified_file(repo_id: str, filename: str, revision: str | None, *, pinned: str | None,
                   offline: bool, cache_dir, endpoint) -> tuple[Path, str | None]:
    """Download (or take from cache) and verify; on mismatch delete, retry once, then raise."""
    path = _hf_download(repo_id, filename, revision, offline=offline, cache_dir=cache_dir, endpoint=endpoint)
    try:
        return path, verify_cached_file(path, pinned)
    except ChecksumMismatchError as first:
        _remove_cached(path)
        if offline:
            raise ChecksumMismatchError(
                f"hf-hub:{repo_id}: cached {filename} is corrupted (sha256 {first.actual}, expected "
                f"{first.expected}); it was deleted. {_prefetch_hint(repo_id, revision, cache_dir)}",
                filename=filename, expected=first.expected, actual=first.actual) from None
    path = _hf_download(repo_id, filename, revision, offline=False, cache_dir=cache_dir,
                        endpoint=endpoint, force=True)
    try:
        return path, verify_cached_file(path, pinned)
    except ChecksumMismatchError as second:
        _remove_cached(path)
        raise ChecksumMismatchError(
            f"hf-hub:{repo_id}@{revision or 'main'}: {filename} failed verification twice: "
            f"expected sha256 {second.expected}, got {second.actual}. The bad copy was deleted; "
            "the server or a proxy is serving corrupted data. Do not use this file.",
            filename=filename, expected=second.expected, actual=second.actual) from None


def commit_of(path: Path) -> str | None:
    """The commit of a file in the Hub cache (``snapshots/<commit>/<file>``), or None."""
    # cache layout: models--org--name/snapshots/<commit>/<file>
    parent = path.parent.name
    return parent if _HEX40.match(parent) else None


def fetch_weights(
    repo_id: str, revision: str | None = None, *, sha256: Mapping[str, str] | None = None,
    offline: bool | None = None, cache_dir=None, endpoint: str | None = None, weights: bool = True,
    readme: bool = False,
):
    """Fetch and verify a weights repo; returns a :class:`rasd_hub.weights.WeightsSource`.

    ``sha256`` pins files by name (``{"model.safetensors": "...", "config.json": "..."}``). With
    ``weights=False`` only ``config.json`` is fetched (to build the architecture).
    """
    offline = is_offline(offline)
    endpoint = hub_endpoint(endpoint)
    cache_dir = _cache_dir(cache_dir)
    pins = dict(sha256 or {})
    cfg_path, _ = _verified_file(repo_id, "config.json", revision, pinned=pins.get("config.json"),
                                 offline=offline, cache_dir=cache_dir, endpoint=endpoint)
    config = read_config(cfg_path.parent)
    commit = commit_of(cfg_path)
    if commit and revision != commit:
        revision_for_rest = commit  # the rest of the files come from the same commit
    else:
        revision_for_rest = revision
    label = f"hf-hub:{repo_id}@{commit or revision or 'main'}"
    if not weights:
        return WeightsSource(config, None, label, ref=label, revision=commit, repo_id=repo_id)
    fname = config.get("weights", {}).get("file", "model.safetensors")
    recorded = config.get("weights", {}).get("sha256")
    pinned = pins.get(fname)
    if pinned and recorded and pinned != recorded:
        raise ChecksumMismatchError(
            f"{label}: config.json records sha256 {recorded} for {fname} but it is pinned to "
            f"{pinned}; the repo is not the pinned weights.", filename=fname, expected=pinned, actual=recorded)
    wpath, digest = _verified_file(repo_id, fname, revision_for_rest, pinned=pinned or recorded,
                                   offline=offline, cache_dir=cache_dir, endpoint=endpoint)
    if readme:
        try:
            _verified_file(repo_id, "README.md", revision_for_rest, pinned=pins.get("README.md"),
                           offline=offline, cache_dir=cache_dir, endpoint=endpoint)
        except WeightsFormatError:
            pass  # a card is nice to have, not needed to load
    return WeightsSource(config, wpath, label, verified_sha256=digest, ref=label, revision=commit,
                         repo_id=repo_id)


@dataclass
class PushResult:
    """What was published: the commit to pin and each file's sha256."""

    repo_id: str
    commit: str
    url: str
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def pin(self) -> str:
        return f"hf-hub:{self.repo_id}@{self.commit}"


def push_to_hub(
    model_or_dir, repo_id: str, *, revision: str | None = None, private: bool = False,
    endpoint: str | None = None, token: str | None = None, commit_message: str | None = None,
    provenance: Mapping[str, Any] | None = None, verbose: bool = True,
) -> PushResult:
    """Upload weights in our format (safetensors + config + card) and return the commit to pin.

    ``model_or_dir``: a weights directory, or a model built by ``create_model`` (saved first to a
    temporary directory with ``provenance``). The card's loading example names ``repo_id``.
    With ``verbose`` the commit and sha256 to pin are printed.
    """
    import tempfile

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if is_offline():
        raise OfflineError("cannot push while HF_HUB_OFFLINE is set; unset it to publish")
    endpoint = hub_endpoint(endpoint)
    with tempfile.TemporaryDirectory(prefix="rasd-push-") as tmp:
        if isinstance(model_or_dir, (str, os.PathLike)):
            folder = Path(model_or_dir)
        else:
            folder = save_pretrained(model_or_dir, Path(tmp) / "w", provenance=provenance)
        config = read_config(folder)
        wname = config.get("weights", {}).get("file", "model.safetensors")
        files = [folder / wname, folder / CONFIG_NAME]
        for f in files:
            if not f.is_file():
                raise WeightsFormatError(f"{folder} has no {f.name}; write it with save_pretrained")
        digests = {f.name: sha256_file(f) for f in files}
        recorded = config.get("weights", {}).get("sha256")
        if recorded and recorded != digests[wname]:
            raise ChecksumMismatchError(
                f"{folder / wname}: sha256 {digests[wname]} differs from config.json's {recorded}; "
                "the directory was modified after export. Re-export it.",
                filename=wname, expected=recorded, actual=digests[wname])
        card = (folder / CARD_NAME).read_text(encoding="utf-8") if (folder / CARD_NAME).is_file() else None
        if card is None:
            card = model_card(config)
        card = card.replace("hf-hub:ORG/REPO", f"hf-hub:{repo_id}").encode()
        digests[CARD_NAME] = hashlib.sha256(card).hexdigest()
        ops = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in files]
        ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card))
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.create_commit(
                repo_id, ops, revision=revision,
                commit_message=commit_message or f"Upload {config['architecture']} weights (rasd_hub)",
            )
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", "?")
            raise HubError(f"pushing to {repo_id} at {endpoint} failed with HTTP {status}: "
                           f"{_short(err)}. Check your token (`hf auth login`) and the repo name.") from None
    result = PushResult(repo_id=repo_id, commit=info.oid, url=str(info.commit_url), sha256=digests)
    if verbose:
        print(f"pushed to {repo_id}: commit {result.commit}")
        for name, digest in digests.items():
            print(f"  sha256 {digest}  {name}")
        print(f"pin: {result.pin}")
    return result
