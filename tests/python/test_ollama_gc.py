"""stquant ollama gc | list | rm (issue 16 item 4) on the store layout ollama uses.

gc removes the blobs no manifest references and stale temporaries, and nothing a running import
needs: it is run here while a real import is stopped (SIGSTOP) half-way, having written blobs its
manifest will reference, and must remove only the orphan. list and rm print and do what ollama's
own `ollama list` / `ollama rm` do (cmd/cmd.go ListHandler / DeleteHandler, server/images.go,
manifest/manifest.go); the expected table is built here from ollama's format.HumanBytes and
format.HumanTime rules, restated in Python from ollama's Go source.
"""
import hashlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_ollama_store import manifest_path


def stq(stquant, *args, ok=True, timeout=60):
    p = subprocess.run([str(stquant), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def convert(stquant, src, store, name, *args):
    stq(stquant, "convert", src, "--layout", "ollama", "--name", name, "--models-dir", store, "--quiet", *args)


def blobs_of(manifest: Path):
    m = json.loads(manifest.read_text())
    return {"sha256-" + l["digest"][7:] for l in m["layers"] + [m["config"]]}


def put_blob(store: Path, data: bytes, age_s: float = 0) -> Path:
    path = store / "blobs" / ("sha256-" + hashlib.sha256(data).hexdigest())
    path.write_bytes(data)
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def age(path: Path, seconds: float):
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture(scope="module")
def big_model(build_dir, tmp_path_factory):
    """A synthetic checkpoint whose int4 import takes a few seconds (time to stop it half-way)."""
    tool = build_dir / "tools" / "make_synthetic_model"
    if not tool.is_file():
        pytest.skip("make_synthetic_model not built")
    out = tmp_path_factory.mktemp("gc") / "big"
    subprocess.run([str(tool), "--out", str(out), "--target-bytes", str(300 << 20), "--shard-bytes", str(100 << 20)],
                   check=True, capture_output=True, timeout=300)
    return out


def test_gc_beside_a_stopped_import_removes_only_the_orphan(stquant, shared_dir, big_model, tmp_path):
    store = tmp_path / "store"
    convert(stquant, shared_dir / "fixtures/hf/tiny-llama", store, "keep", "-q", "int4")
    kept = blobs_of(manifest_path(store, "keep"))
    orphan = put_blob(store, b"no manifest names me", age_s=7200)
    before = {p.name for p in (store / "blobs").iterdir()}

    proc = subprocess.Popen([str(stquant), "convert", str(big_model), "--layout", "ollama", "--name", "big",
                             "--models-dir", str(store), "-q", "int4", "--quiet", "-j", "1"])
    try:
        new = set()
        deadline = time.time() + 120
        while time.time() < deadline and len(new) < 2:
            new = {p.name for p in (store / "blobs").iterdir() if p.name.startswith("sha256-")} - before
            time.sleep(0.01)
        assert proc.poll() is None and len(new) >= 2, "the import finished too early (make the model bigger)"
        # A killed import's temporary (no lock file); made now, since an import that starts removes them.
        dead_temp = store / "blobs" / ".stquant-tmp-999999-0123456789abcdef-0"
        dead_temp.write_bytes(b"partial")
        for attempt in range(5):
            os.kill(proc.pid, signal.SIGSTOP)
            # The stopped import's blobs: everything new in blobs/ (all in its journal).
            importing = {p.name for p in (store / "blobs").iterdir() if p.name.startswith("sha256-")} - before
            journal = [p for p in (store / "blobs").iterdir() if p.name.endswith(".blobs")]
            p = stq(stquant, "ollama", "gc", "--models-dir", store, "--grace", "0", ok=False, timeout=30)
            if p.returncode == 3 and "is busy" in p.stderr:  # stopped while committing a blob: let it go on
                os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.05)
                continue
            break
        assert p.returncode == 0, p.stderr
        assert len(journal) == 1 and importing and not manifest_path(store, "big").exists()
        assert f"removed {orphan}" in p.stdout and f"removed {dead_temp}" in p.stdout
        assert "removed 1 unreferenced blob" in p.stdout and "in use by running imports" in p.stdout
        left = {p.name for p in (store / "blobs").iterdir()}
        assert orphan.name not in left and dead_temp.name not in left
        assert kept <= left and importing <= left
        assert journal[0].exists()  # the running import's own files stay
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=600) == 0
    # The import completed with every blob it named, and gc finds nothing more to remove.
    for name in blobs_of(manifest_path(store, "big")) | kept:
        path = store / "blobs" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name[7:]
    p = stq(stquant, "ollama", "gc", "--models-dir", store, "--grace", "0")
    assert p.stdout.startswith("removed 0 unreferenced blobs (0 B) and 0 stale temporaries"), p.stdout
    assert not any(p.name.startswith(".stquant-tmp-") for p in (store / "blobs").iterdir())


def test_gc_grace_period_dry_run_and_foreign_temporaries(stquant, shared_dir, tmp_path):
    store = tmp_path / "store"
    convert(stquant, shared_dir / "fixtures/hf/tiny-llama", store, "m", "-q", "int4")
    fresh = put_blob(store, b"fresh orphan")  # maybe another tool's import in flight: kept for an hour
    old = put_blob(store, b"old orphan", age_s=2 * 3600)
    ollama_temp = store / "blobs" / "sha256-2718281828"  # ollama's os.CreateTemp(blobs, "sha256-")
    ollama_temp.write_bytes(b"t")
    partial = store / "blobs" / ("sha256-" + "b" * 64 + "-partial")  # an ollama pull's download part
    partial.write_bytes(b"p")
    recent_partial = store / "blobs" / ("sha256-" + "c" * 64 + "-partial-0")
    recent_partial.write_bytes(b"q")
    age(ollama_temp, 7200)
    age(partial, 7200)
    manifest_temp = manifest_path(store, "m").parent / ".latest.tmp-4242-0123456789abcdef"
    manifest_temp.write_text("{}")
    age(manifest_temp, 7200)

    p = stq(stquant, "ollama", "gc", "--models-dir", store, "--dry-run")
    would = {line.split()[2] for line in p.stdout.splitlines() if line.startswith("would remove /")}
    assert would == {str(old), str(ollama_temp), str(partial), str(manifest_temp)}
    assert "1 younger than 1h" not in p.stdout and "2 younger than 1h" in p.stdout
    assert old.exists() and ollama_temp.exists()  # a dry run removes nothing

    p = stq(stquant, "ollama", "gc", "--models-dir", store)
    assert not old.exists() and not ollama_temp.exists() and not partial.exists() and not manifest_temp.exists()
    assert fresh.exists() and recent_partial.exists()
    p = stq(stquant, "ollama", "gc", "--models-dir", store, "--grace", "0")
    assert not fresh.exists() and not recent_partial.exists()
    assert blobs_of(manifest_path(store, "m")) == {p.name for p in (store / "blobs").iterdir()}
    stq(stquant, "ollama", "list", "--models-dir", store)  # the model is intact
    p = stq(stquant, "ollama", "gc", "--models-dir", store, "--grace", "soon", ok=False)
    assert p.returncode == 2 and "--grace 'soon': not a duration" in p.stderr


def test_gc_refuses_with_an_unreadable_manifest(stquant, shared_dir, tmp_path):
    store = tmp_path / "store"
    convert(stquant, shared_dir / "fixtures/hf/tiny-llama", store, "a", "-q", "int4")
    convert(stquant, shared_dir / "fixtures/hf/tiny-qwen3", store, "b", "-q", "int4")
    put_blob(store, b"orphan", age_s=7200)
    manifest_path(store, "b").write_text("{ not json")
    before = sorted(p.name for p in (store / "blobs").iterdir())
    p = stq(stquant, "ollama", "gc", "--models-dir", store, ok=False)
    assert p.returncode == 2 and str(manifest_path(store, "b")) in p.stderr and "nothing was removed" in p.stderr
    assert sorted(p.name for p in (store / "blobs").iterdir()) == before
    p = stq(stquant, "ollama", "gc", "--models-dir", tmp_path / "nowhere", ok=False)
    assert p.returncode == 2 and "no ollama model store" in p.stderr


# ---- ollama list: format.HumanBytes / HumanTime and tablewriter as ollama's cmd/cmd.go uses them.


def human_bytes(b: int) -> str:
    for size, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if b >= size:
            value = b / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{b} B"


def human_time(seconds_ago: float) -> str:
    s = int(seconds_ago)
    if s < 1:
        return "Less than a second ago"
    if s == 1:
        return "1 second ago"
    if s < 60:
        return f"{s} seconds ago"
    minutes = int(seconds_ago / 60)
    if minutes == 1:
        return "About a minute ago"
    if minutes < 60:
        return f"{minutes} minutes ago"
    hours = round(seconds_ago / 3600)
    if hours == 1:
        return "About an hour ago"
    if hours < 48:
        return f"{hours} hours ago"
    if hours < 24 * 14:
        return f"{hours // 24} days ago"
    if hours < 24 * 60:
        return f"{hours // 24 // 7} weeks ago"
    if hours < 24 * 730:
        return f"{hours // 24 // 30} months ago"
    return f"{int(seconds_ago / 3600) // 24 // 365} years ago"


def table(rows):
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [cell.ljust(w) + (" " if i == 0 and c == len(row) - 1 else "    ") for c, (cell, w) in
                 enumerate(zip(row, widths))]
        lines.append("".join(cells))
    return "\n".join(lines) + "\n"


def test_list_prints_what_ollama_list_prints(stquant, shared_dir, tmp_path):
    store = tmp_path / "store"
    ages = {"a": 3 * 3600 + 100, "me/b:v1": 45, "example.com/team/c:q4": 10 * 86400, "remote": 90}
    convert(stquant, shared_dir / "fixtures/hf/tiny-llama", store, "a", "-q", "int4")
    convert(stquant, shared_dir / "fixtures/hf/tiny-qwen3", store, "me/b:v1", "-q", "int8")
    convert(stquant, shared_dir / "fixtures/hf/tiny-llama", store, "example.com/team/c:q4", "-q", "mxfp4")
    # A remote model: its config blob names the remote (ollama shows "-" for its size).
    config = put_blob(store, json.dumps({"remote_model": "gpt-oss:120b", "remote_host": "https://ollama.com"}).encode())
    path = store / "manifests/registry.ollama.ai/library/remote/latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                           "digest": "sha256:" + config.name[7:], "size": config.stat().st_size},
                                "layers": []}) + "\n")
    paths = {"a": manifest_path(store, "a"), "me/b:v1": store / "manifests/registry.ollama.ai/me/b/v1",
             "example.com/team/c:q4": store / "manifests/example.com/team/c/q4", "remote": path}
    now = time.time()
    for name, seconds in ages.items():
        os.utime(paths[name], (now - seconds, now - seconds))
    (store / "manifests/registry.ollama.ai/library/a/.hidden~").write_text("not a model")  # an invalid name
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for name in sorted(ages, key=lambda n: ages[n]):
        data = paths[name].read_bytes()
        m = json.loads(data)
        size = sum(l["size"] for l in m["layers"]) + m["config"]["size"]
        short = {"a": "a:latest", "remote": "remote:latest"}.get(name, name)
        rows.append([short, hashlib.sha256(data).hexdigest()[:12], "-" if name == "remote" else human_bytes(size),
                     human_time(ages[name])])
    p = stq(stquant, "ollama", "list", "--models-dir", store)
    assert p.stdout == table(rows)
    assert stq(stquant, "ollama", "ls", "--models-dir", store, "ME/").stdout == table([rows[0], rows[1]])
    assert stq(stquant, "ollama", "list", "--models-dir", tmp_path / "empty", ok=False).returncode == 2
    (tmp_path / "empty/blobs").mkdir(parents=True)
    assert stq(stquant, "ollama", "list", "--models-dir", tmp_path / "empty").stdout == "NAME    ID    SIZE    MODIFIED \n"


def test_rm_removes_the_manifest_and_only_unshared_blobs(stquant, shared_dir, tmp_path):
    store = tmp_path / "store"
    src = shared_dir / "fixtures/hf/tiny-llama"
    convert(stquant, src, store, "x", "-q", "int4")
    convert(stquant, src, store, "me/y:v2", "-q", "int8")  # shares the unquantized tensors and JSON files
    x, y = blobs_of(manifest_path(store, "x")), blobs_of(store / "manifests/registry.ollama.ai/me/y/v2")
    assert x & y and x - y
    p = stq(stquant, "ollama", "rm", "--models-dir", store, "ME/Y:V2")  # each part matched case-insensitively
    assert p.stdout == "deleted 'ME/Y:V2'\n"
    assert not (store / "manifests/registry.ollama.ai/me").exists()  # empty directories pruned
    assert {p.name for p in (store / "blobs").iterdir() if p.name.startswith("sha256-")} == x
    p = stq(stquant, "ollama", "rm", "--models-dir", store, "nope", ok=False)
    assert p.returncode == 2 and p.stderr == "stquant: error: model 'nope' not found\n"
    p = stq(stquant, "ollama", "rm", "--models-dir", store, "bad name!", ok=False)
    assert p.returncode == 2 and "invalid model name" in p.stderr
    assert stq(stquant, "ollama", "rm", "--models-dir", store, "x").stdout == "deleted 'x'\n"
    assert not any(p.name.startswith("sha256-") for p in (store / "blobs").iterdir())
    assert stq(stquant, "ollama", "list", "--models-dir", store).stdout == "NAME    ID    SIZE    MODIFIED \n"
