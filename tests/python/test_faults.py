"""Issue 8, faults end to end through the binary: a full disk (a real, small tmpfs) gives exit 3
and one line naming the file, with nothing left on the disk; `kill -9` at random points of a
convert leaves no output directory, and the next run cleans up the hidden temporary directory.

tests/output/fault_injection_test.cc sweeps injected write faults over every part of convert /
quantize / dequantize; here the faults are real ones."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: the tiny model (2.9 MB; about 1 MB as int4 with its tokenizer) does not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _one_line_error(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.startswith("stquant: error: ") and text.count("\n") == 1, text
    return text


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_convert_on_a_full_disk(stquant, repo_root, small_disk, quant):
    args = [str(stquant), "convert", str(repo_root / "examples" / "tiny-model"), "-o", str(small_disk / "out"),
            "--quiet"]
    if quant != "none":
        args += ["-q", quant]
    # The preflight refuses it before writing (test_preflight.py) ...
    out = subprocess.run(args, capture_output=True, timeout=120)
    assert out.returncode == 3 and "preflight: not enough free space" in _one_line_error(out.stderr)
    assert list(small_disk.iterdir()) == []
    # ... and without it the full disk is met while writing.
    out = subprocess.run(args + ["--no-preflight"], capture_output=True, timeout=120)
    assert out.returncode == 3, out.stderr
    message = _one_line_error(out.stderr)
    assert "No space left on device" in message and str(small_disk) in message
    assert list(small_disk.iterdir()) == []


def test_quantize_on_a_full_disk(stquant, repo_root, small_disk):
    src = repo_root / "examples" / "tiny-model" / "model-00001-of-00002.safetensors"
    out = subprocess.run([str(stquant), "quantize", str(src), "-o", str(small_disk / "q.safetensors"), "-q", "int8"],
                         capture_output=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "No space left on device" in _one_line_error(out.stderr)
    assert list(small_disk.iterdir()) == []


KILLS = 6


@pytest.fixture(scope="module")
def synthetic_model(build_dir, tmp_path_factory):
    """A synthetic qwen3_moe checkpoint that takes a second or more to convert."""
    tool = build_dir / "tools" / "make_synthetic_model"
    if not tool.is_file():
        pytest.skip(f"{tool} not built")
    out = tmp_path_factory.mktemp("synthetic") / "model"
    subprocess.run([str(tool), "--out", str(out), "--target-bytes", "120000000", "--shard-bytes", "40000000"],
                   check=True, capture_output=True, timeout=300)
    return out


def test_kill_9_during_convert_leaves_no_partial_model(stquant, synthetic_model, tmp_path):
    target = tmp_path / "converted"
    args = [str(stquant), "convert", str(synthetic_model), "-o", str(target), "-q", "int4", "--quiet", "-j", "2"]
    start = time.monotonic()
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    full = time.monotonic() - start
    expected = sorted(p.name for p in target.iterdir())
    subprocess.run(["rm", "-rf", str(target)], check=True)

    rng = random.Random(8)
    killed = 0
    for i in range(KILLS):
        delay = rng.uniform(0.02, max(0.05, full * 0.95))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            killed += 1
            # Killed before the final rename: no output directory, at most a hidden temporary.
            assert not target.exists(), f"kill {i} after {delay:.2f}s left {target}"
            leftovers = [p.name for p in tmp_path.iterdir()]
            assert all(name.startswith(".converted.stquant-tmp-") for name in leftovers), leftovers
        else:  # finished before the kill landed
            assert proc.returncode == 0
            subprocess.run(["rm", "-rf", str(target)], check=True)
    assert killed >= KILLS // 2

    # The next run to the same target succeeds and removes the leftovers.
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
    assert sorted(p.name for p in target.iterdir()) == expected


def _start_when_writing(first_args: list, second_args: list, parent: Path,
                        prefix: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Starts a run, and a second one once the first is writing (its temporaries exist in parent)."""
    first = subprocess.Popen(first_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(prefix) and not p.name.endswith(".lock") for p in parent.iterdir()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never started writing"
        time.sleep(0.005)
    return first, subprocess.Popen(second_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
def test_concurrent_converts_to_one_output(stquant, synthetic_model, tmp_path, force):
    args = [str(stquant), "convert", str(synthetic_model), "-q", "int4", "--quiet", "-j", "1"]
    alone = tmp_path / "alone" / "converted"
    subprocess.run([*args, "-o", str(alone)], check=True, capture_output=True, timeout=300)
    parent = tmp_path / "shared"
    parent.mkdir()
    target = parent / "converted"
    run = [*args, "-o", str(target), *(["--force"] if force else [])]
    first, second = _start_when_writing(run, run, parent, ".converted.stquant-tmp-")
    errors = [p.communicate(timeout=300)[1].decode() for p in (first, second)]
    codes = [first.returncode, second.returncode]
    if force:
        # Both complete; the later one swapped its directory in atomically.
        assert codes == [0, 0], errors
    else:
        # The first to finish wins; the other fails cleanly, leaving the winner's output alone.
        assert sorted(codes) == [0, 2], errors
        loser = errors[codes.index(2)]
        assert loser.count("\n") == 1 and "already exists" in loser, loser
    assert [p.name for p in parent.iterdir()] == ["converted"]  # no temporaries, no lock files
    assert _tree(target) == _tree(alone)


def test_concurrent_ollama_imports_into_one_store(stquant, synthetic_model, tmp_path):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)

    def args(name):
        return [str(stquant), "convert", str(synthetic_model), "--layout", "ollama", "--name", name,
                "--models-dir", str(store), "-q", "int4", "--quiet", "-j", "1"]

    first, second = _start_when_writing(args("first"), args("second"), store / "blobs", ".stquant-tmp-")
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    # Both models are complete: every blob of each manifest is there under its digest.
    for name in ("first", "second"):
        manifest = json.loads((store / "manifests" / "registry.ollama.ai" / "library" / name / "latest").read_text())
        for layer in [manifest["config"], *manifest["layers"]]:
            blob = store / "blobs" / layer["digest"].replace(":", "-")
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].split(":")[1]
    assert not [p.name for p in (store / "blobs").iterdir() if not p.name.startswith("sha256-")]
