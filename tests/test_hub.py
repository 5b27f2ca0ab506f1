"""rasd_hub against a local Hub server, driven through the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import rasd_hub
from rasd_hub.errors import ChecksumMismatchError, HubError, OfflineError, WeightsFormatError
from rasd_hub.hub import fetch_weights, push_to_hub

REPO = "rasd-test/small2d"


@pytest.fixture
def fast_retries(monkeypatch):
    """The client sleeps 1-8 s between retries; tests only need to see that it gives up."""
    monkeypatch.setattr(time, "sleep", lambda s: None)


@pytest.fixture
def pushed(hub_server, hf_cache):
    """A rasd2d_small model pushed to the local hub: (model, PushResult)."""
    torch.manual_seed(0)
    model = rasd_hub.create_model("rasd2d_small").eval()
    res = push_to_hub(model, REPO, endpoint=hub_server.url, token="test-token",
                      provenance={"preset": "rasd2d_small", "steps": 3, "seed": 0})
    return model, res


def _blob_of(cache: Path, commit: str, filename: str, repo: str = REPO) -> Path:
    snap = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / commit / filename
    return snap.resolve()


def test_push_then_create_model_round_trip(pushed, hub_server, hf_cache):
    model, res = pushed
    assert len(res.commit) == 40 and set(res.sha256) == {"model.safetensors", "config.json", "README.md"}
    loaded = rasd_hub.create_model(f"hf-hub:{REPO}@{res.commit}", pretrained=True,
                                   endpoint=hub_server.url, cache_dir=hf_cache).eval()
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert loaded.rasd_config["pretrained"] == {"source": f"hf-hub:{REPO}@{res.commit}",
                                                "sha256": res.sha256["model.safetensors"]}
    # the card names the repo, and the revision defaults to main
    card = Path(fetch_weights(REPO, endpoint=hub_server.url, cache_dir=hf_cache, readme=True)
                .weights_file).parent / "README.md"
    assert f"hf-hub:{REPO}" in card.read_text()
    assert rasd_hub.load(f"hf-hub:{REPO}", endpoint=hub_server.url, cache_dir=hf_cache).rasd_config[
        "pretrained"]["source"].endswith(res.commit)


def test_hf_hub_name_without_pretrained_builds_the_architecture_only(pushed, hub_server, hf_cache):
    model, res = pushed
    fresh = rasd_hub.create_model(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)
    assert fresh.rasd_config["architecture"] == "rasd2d_small" and "pretrained" not in fresh.rasd_config
    head = [k for k in fresh.state_dict() if k.endswith("weight")][0]
    assert not torch.equal(fresh.state_dict()[head], model.state_dict()[head])


def test_pinned_and_cached_load_makes_no_request_even_with_the_server_stopped(pushed, hub_server, hf_cache):
    model, res = pushed
    name = f"hf-hub:{REPO}@{res.commit}"
    rasd_hub.load(name, endpoint=hub_server.url, cache_dir=hf_cache)
    hub_server.state.log.clear()
    rasd_hub.load(name, endpoint=hub_server.url, cache_dir=hf_cache)
    assert hub_server.state.log == []  # pinned commit + warm cache: no request at all
    hub_server.stop()
    loaded = rasd_hub.load(name, endpoint=hub_server.url, cache_dir=hf_cache).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_hf_hub_offline_in_a_subprocess(pushed, hub_server, hf_cache):
    _, res = pushed
    rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)
    hub_server.state.log.clear()
    script = textwrap.dedent(f"""
        import rasd_hub
        from rasd_hub.errors import OfflineError
        m = rasd_hub.load("hf-hub:{REPO}@{res.commit}", cache_dir={str(hf_cache)!r})
        print("LOADED", m.rasd_config["architecture"])
        try:
            rasd_hub.load("hf-hub:rasd-test/not-cached@main", cache_dir={str(hf_cache)!r})
        except OfflineError as err:
            print("OFFLINE", err)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub_server.url}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED rasd2d_small" in proc.stdout
    assert "OFFLINE" in proc.stdout and "rasd hub download hf-hub:rasd-test/not-cached@main" in proc.stdout
    assert hub_server.state.log == []  # offline never touched the server


def test_offline_flag_without_cache_says_how_to_prefetch(hub_server, hf_cache):
    with pytest.raises(OfflineError, match="rasd hub download"):
        rasd_hub.load(f"hf-hub:{REPO}@main", offline=True, endpoint=hub_server.url, cache_dir=hf_cache)
    assert hub_server.state.log == []


def test_same_size_corruption_in_transit_is_caught_and_retried_once(pushed, hub_server, hf_cache):
    model, res = pushed
    hub_server.state.faults.corrupt["model.safetensors"] = 1  # first GET flipped, second clean
    loaded = rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)
    assert torch.equal(loaded.state_dict()["model.0.conv.unit0.conv.weight"],
                       model.state_dict()["model.0.conv.unit0.conv.weight"])
    gets = [r for r in hub_server.state.log if r.startswith("GET /{repo}/resolve")]
    assert len(gets) == 3  # config.json, corrupted weights, weights again


def test_persistent_corruption_raises_with_both_hashes_and_deletes_the_blob(pushed, hub_server, hf_cache):
    _, res = pushed
    hub_server.state.faults.corrupt["model.safetensors"] = 10
    with pytest.raises(ChecksumMismatchError) as err:
        rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)
    e = err.value
    good = res.sha256["model.safetensors"]
    assert e.filename == "model.safetensors" and e.expected == good and e.actual != good
    assert good in str(e) and e.actual in str(e) and "model.safetensors" in str(e)
    blobs = hf_cache / ("models--" + REPO.replace("/", "--")) / "blobs"
    assert not (blobs / good).exists()


def test_corrupted_cached_blob_is_caught_offline_and_refetched_online(pushed, hub_server, hf_cache):
    _, res = pushed
    name = f"hf-hub:{REPO}@{res.commit}"
    rasd_hub.load(name, endpoint=hub_server.url, cache_dir=hf_cache)
    blob = _blob_of(hf_cache, res.commit, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0x01  # bit rot, same size
    blob.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="corrupted"):
        rasd_hub.load(name, offline=True, endpoint=hub_server.url, cache_dir=hf_cache)
    assert not blob.exists()  # the bad blob was removed
    hub_server.state.log.clear()
    rasd_hub.load(name, endpoint=hub_server.url, cache_dir=hf_cache)  # online: downloaded again
    assert any(r.startswith("GET /{repo}/resolve") for r in hub_server.state.log)
    assert blob.exists()


@pytest.fixture
def temporary_tags():
    """register(cfg) adds a tag for one test."""
    from rasd_hub.pretrained import register_pretrained
    from rasd_hub._registry import unregister_pretrained

    names = []

    def register(cfg):
        names.append(cfg.name)
        return register_pretrained(cfg)

    yield register
    for name in names:
        unregister_pretrained(name)


def test_pretrained_cfg_with_pinned_hub_source(pushed, hub_server, hf_cache, temporary_tags):
    from rasd_hub import pretrained

    model, res = pushed
    pins = {k: res.sha256[k] for k in ("model.safetensors", "config.json")}
    cfg = temporary_tags(pretrained.PretrainedCfg("rasd2d_small", "test_hub", hf_hub_id=REPO,
                                                  revision=res.commit, sha256=pins))
    assert "rasd2d_small.test_hub" in rasd_hub.list_models(pretrained=True)
    loaded = rasd_hub.create_model("rasd2d_small.test_hub", pretrained=True, num_classes=2,
                                   endpoint=hub_server.url, cache_dir=hf_cache)
    assert loaded.rasd_config["out_channels"] == 2 and loaded.load_report.reinitialized
    temporary_tags(pretrained.PretrainedCfg("rasd2d_small", "bad_pin", hf_hub_id=REPO, revision=res.commit,
                                            sha256={**pins, "model.safetensors": "0" * 64}))
    with pytest.raises(ChecksumMismatchError, match="0{64}"):
        rasd_hub.create_model("rasd2d_small.bad_pin", pretrained=True, endpoint=hub_server.url, cache_dir=hf_cache)


def test_pretrained_cfg_requires_real_pins():
    from rasd_hub.errors import RasdValueError
    from rasd_hub.pretrained import PretrainedCfg, register_pretrained

    both = {"model.safetensors": "0" * 64, "config.json": "1" * 64}
    with pytest.raises(RasdValueError, match="commit"):
        register_pretrained(PretrainedCfg("rasd2d_small", "x", hf_hub_id="a/b", revision="main", sha256=both))
    with pytest.raises(RasdValueError, match="sha256"):
        register_pretrained(PretrainedCfg("rasd2d_small", "x", hf_hub_id="a/b", revision="0" * 40))
    with pytest.raises(RasdValueError, match="sha256 of config.json"):
        register_pretrained(PretrainedCfg("rasd2d_small", "x", hf_hub_id="a/b", revision="0" * 40,
                                          sha256={"model.safetensors": "0" * 64}))
    with pytest.raises(RasdValueError, match="no source"):
        register_pretrained(PretrainedCfg("rasd2d_small", "x"))
    assert "rasd2d_small.x" not in rasd_hub.list_models(pretrained=True)


def test_missing_repo_revision_and_file_give_clear_errors(pushed, hub_server, hf_cache, tmp_path):
    _, res = pushed
    kw = dict(endpoint=hub_server.url, cache_dir=hf_cache)
    with pytest.raises(HubError, match="repository not found"):
        rasd_hub.load("hf-hub:rasd-test/nope", **kw)
    with pytest.raises(HubError, match="revision 'v9' not found"):
        rasd_hub.load(f"hf-hub:{REPO}@v9", **kw)
    # a repo that is not in our format
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token="t")
    api.create_repo("rasd-test/other")
    (tmp_path / "notes.txt").write_text("hello")
    api.upload_file(path_or_fileobj=str(tmp_path / "notes.txt"), path_in_repo="notes.txt", repo_id="rasd-test/other")
    with pytest.raises(WeightsFormatError, match="has no config.json.*rasd hub push"):
        rasd_hub.load("hf-hub:rasd-test/other", **kw)


def test_server_errors_give_clear_errors(pushed, hub_server, hf_cache, fast_retries):
    _, res = pushed
    hub_server.state.faults.http_error["model.safetensors"] = (503, 1000)
    with pytest.raises(HubError, match="HTTP 503"):
        rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)


def test_truncated_transfer_is_resumed_and_verified(pushed, hub_server, hf_cache, fast_retries):
    model, res = pushed
    hub_server.state.faults.truncate["model.safetensors"] = 1
    loaded = rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)
    assert loaded.rasd_config["pretrained"]["sha256"] == res.sha256["model.safetensors"]


def test_persistently_truncated_transfer_gives_a_clear_error(pushed, hub_server, hf_cache, fast_retries):
    _, res = pushed
    hub_server.state.faults.truncate["model.safetensors"] = 1000
    with pytest.raises(HubError, match="model.safetensors"):
        rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", endpoint=hub_server.url, cache_dir=hf_cache)


def test_client_protocol_contract(hub_server, hf_cache, tmp_path):
    """The endpoints huggingface_hub uses for push + download; a protocol change fails here."""
    model = rasd_hub.create_model("rasd2d_small")
    res = push_to_hub(model, REPO, endpoint=hub_server.url, token="t", revision="v1")
    rasd_hub.load(f"hf-hub:{REPO}@v1", endpoint=hub_server.url, cache_dir=hf_cache)
    from huggingface_hub import snapshot_download

    snapshot_download(REPO, revision="v1", cache_dir=tmp_path / "snap", endpoint=hub_server.url)
    assert set(hub_server.state.log) == {
        "POST /api/repos/create",
        "POST /api/models/{repo}/branch/{branch}",
        "POST /api/models/{repo}/preupload/{rev}",
        "POST /{repo}.git/info/lfs/objects/batch",
        "PUT /lfs-upload/{oid}",
        "POST /api/validate-yaml",
        "POST /api/models/{repo}/commit/{rev}",
        "HEAD /{repo}/resolve/{rev}/{path}",
        "GET /{repo}/resolve/{rev}/{path}",
        "GET /api/models/{repo}/revision/{rev}",
        "GET /api/models/{repo}/tree/{rev}",
    }


def test_push_refuses_a_modified_directory(hub_server, hf_cache, tmp_path):
    weights = rasd_hub.save_pretrained(rasd_hub.create_model("rasd2d_small"), tmp_path / "w")
    with open(weights / "model.safetensors", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"xyz")
    with pytest.raises(ChecksumMismatchError, match="modified after export"):
        push_to_hub(weights, REPO, endpoint=hub_server.url, token="t")


def test_cli_push_download_then_offline_load(hub_server, hf_cache, tmp_path, capsys, monkeypatch):
    from rasd_hub.cli import main

    rasd_hub.save_pretrained(rasd_hub.create_model("rasd3d_small"), tmp_path / "w", provenance={"preset": "x"})
    assert main(["hub", "push", str(tmp_path / "w"), "rasd-test/small3d", "--endpoint", hub_server.url,
                 "--token", "t", "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["pin"] == f"hf-hub:rasd-test/small3d@{pushed['commit']}"
    assert len(pushed["sha256"]["model.safetensors"]) == 64
    assert main(["hub", "download", "hf-hub:rasd-test/small3d", "--cache-dir", str(hf_cache),
                 "--endpoint", hub_server.url]) == 0
    out = capsys.readouterr().out
    assert pushed["commit"] in out and pushed["sha256"]["model.safetensors"] in out
    hub_server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = rasd_hub.load(pushed["pin"], cache_dir=hf_cache)
    assert model.rasd_config["architecture"] == "rasd3d_small"
    assert main(["hub", "info", pushed["pin"], "--cache-dir", str(hf_cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "rasd3d_small" and info["provenance"]["preset"] == "x"


def test_cli_errors_are_one_line_with_status_2(hub_server, hf_cache, capsys):
    from rasd_hub.cli import main

    assert main(["hub", "download", "hf-hub:rasd-test/nope", "--cache-dir", str(hf_cache),
                 "--endpoint", hub_server.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rasd: error:") and "repository not found" in err and "Traceback" not in err


def test_bench_hub_measures_a_small_model(tmp_path):
    from rasd_hub.bench import format_table, run_benchmark

    res = run_benchmark(["rasd2d_small"], repeat=1, work_dir=str(tmp_path))
    row = res["rows"][0]
    assert row["model"] == "rasd2d_small" and row["build_s"] > 0 and row["load_s"] > 0
    assert row["weights_mib"] > 1
    if row["peak_extra_ratio"] is not None:  # Linux /proc available
        assert row["peak_extra_mib"] < 1.3 * row["weights_mib"] + 32  # allocator noise on tiny models
    assert "rasd2d_small" in format_table(res)


def test_hf_endpoint_is_read_at_call_time(pushed, hub_server, hf_cache, monkeypatch):
    """huggingface_hub reads HF_ENDPOINT once at import; rasd_hub reads it on every call."""
    _, res = pushed
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    model = rasd_hub.load(f"hf-hub:{REPO}@{res.commit}", cache_dir=hf_cache)
    assert model.rasd_config["pretrained"]["sha256"] == res.sha256["model.safetensors"]
    assert any(r.startswith("GET /{repo}/resolve") for r in hub_server.state.log)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    from rasd_hub._io import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")  # what a plain open() gives under this umask
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode
