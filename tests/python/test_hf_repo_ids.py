"""Hugging Face repo ids, offline: `stquant convert ORG/NAME` and `stquant mlx-convert --hf-path
ORG/NAME` read the model from a Hugging Face cache tree built here by hand, laid out as
huggingface_hub writes it (models--org--name/refs/<rev>, snapshots/<commit>/ with symlinks into
blobs/), at HF_HUB_CACHE or HF_HOME/hub. huggingface_hub itself (installed with mlx-lm) must find
the same snapshot, so the tree is checked against it rather than against our own reading.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

MAIN = "0123456789abcdef0123456789abcdef01234567"
OLD = "89abcdef0123456789abcdef0123456789abcdef"


def add_snapshot(cache: Path, repo_id: str, commit: str, src: Path, refs=()):
    """Copies `src` into the cache as huggingface_hub stores a download: every file a blob named by
    a hash, the snapshot a tree of relative symlinks, and refs/<name> holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = repo / "blobs" / f"{commit[:8]}-{f.name}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def cache(shared_dir, tmp_path):
    hub = tmp_path / "hf-home" / "hub"
    add_snapshot(hub, "tiny-org/tiny-llama", MAIN, shared_dir / "fixtures/hf/tiny-llama", refs=["main"])
    add_snapshot(hub, "tiny-org/tiny-llama", OLD, shared_dir / "fixtures/hf/tiny-qwen3", refs=["v1", "refs/pr/1"])
    return hub


def run(stquant, args, env):
    return subprocess.run([str(stquant), *args], capture_output=True, text=True, env=env)


def hub_env(hub: Path, how: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env["HF_HUB_OFFLINE"] = "1"
    if how == "HF_HUB_CACHE":
        env["HF_HUB_CACHE"] = str(hub)
    elif how == "HF_HOME":
        env["HF_HOME"] = str(hub.parent)
    else:  # ~/.cache/huggingface/hub
        home = hub.parent.parent / "home"
        (home / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        link = home / ".cache" / "huggingface" / "hub"
        if not link.exists():
            link.symlink_to(hub)
        env["HOME"] = str(home)
        env.pop("XDG_CACHE_HOME", None)
    return env


def huggingface_hub_snapshot(env, repo_id, revision=None) -> str:
    code = ("import sys, huggingface_hub as h; print(h.snapshot_download(sys.argv[1], revision=sys.argv[2] or None, "
            "local_files_only=True))")
    p = subprocess.run([os.sys.executable, "-c", code, repo_id, revision or ""], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.parametrize("how", ["HF_HUB_CACHE", "HF_HOME", "HOME"])
def test_repo_id_resolves_like_huggingface_hub(stquant, cache, tmp_path, how):
    env = hub_env(cache, how)
    for revision, commit, arch in [(None, MAIN, "LlamaForCausalLM"), ("v1", OLD, "Qwen3ForCausalLM"),
                                   ("refs/pr/1", OLD, "Qwen3ForCausalLM"), (OLD, OLD, "Qwen3ForCausalLM")]:
        assert Path(huggingface_hub_snapshot(env, "tiny-org/tiny-llama", revision)).name == commit
        out = tmp_path / f"out-{how}-{commit[:4]}-{(revision or 'main').replace('/', '_')}"
        args = ["convert", "tiny-org/tiny-llama", "-o", str(out), "-q", "int4", "--quiet"]
        p = run(stquant, args + (["--revision", revision] if revision else []), env)
        assert p.returncode == 0, p.stderr
        assert arch in (out / "config.json").read_text()
        # Same bytes as converting the snapshot directory itself.
        direct = tmp_path / (out.name + "-direct")
        snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / commit
        assert run(stquant, ["convert", str(snapshot), "-o", str(direct), "-q", "int4", "--quiet"], env).returncode == 0
        assert (out / "model.safetensors").read_bytes() == (direct / "model.safetensors").read_bytes()


def test_mlx_convert_hf_path(stquant, cache, tmp_path):
    env = hub_env(cache, "HF_HUB_CACHE")
    out = tmp_path / "mlx"
    p = run(stquant, ["mlx-convert", "--hf-path", "tiny-org/tiny-llama", "--mlx-path", str(out), "-q"], env)
    assert p.returncode == 0, p.stderr
    with safe_open(out / "model.safetensors", framework="np") as f:
        assert "model.layers.0.self_attn.q_proj.scales" in f.keys()
    # `convert --hf-path` names the source as mlx_lm.convert does.
    p = run(stquant, ["convert", "--hf-path", "tiny-org/tiny-llama", "-o", str(tmp_path / "c"), "-q", "int4", "--quiet"], env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_not_in_cache_says_how_to_fetch(stquant, cache, tmp_path):
    env = hub_env(cache, "HF_HUB_CACHE")
    p = run(stquant, ["convert", "Qwen/Qwen3-8B", "-o", str(tmp_path / "x"), "-q", "int4"], env)
    assert p.returncode == 2
    assert p.stderr.startswith("stquant: error: 'Qwen/Qwen3-8B' is not a local directory")
    assert "`hf download Qwen/Qwen3-8B`" in p.stderr and len(p.stderr.splitlines()) == 1
    p = run(stquant, ["convert", "tiny-org/tiny-llama", "--revision", "v2", "-o", str(tmp_path / "x")], env)
    assert p.returncode == 2 and "`hf download tiny-org/tiny-llama --revision v2`" in p.stderr
    p = run(stquant, ["convert", "tiny-org/tiny-llama", "--revision", "../../x", "-o", str(tmp_path / "x")], env)
    assert p.returncode == 2 and "not a branch, tag or commit" in p.stderr
    p = run(stquant, ["convert", "/no/such/model", "-o", str(tmp_path / "x")], env)
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not (tmp_path / "x").exists()
