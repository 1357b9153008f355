"""The preflight of `stquant convert` (issue 16 item 1): before any weight is read and before anything
is created, a conversion that cannot succeed fails within a second, naming what is wrong and what
would have been written:

  * a model directory missing a shard (named by the index, or by the model-<i>-of-<N> names);
  * a requested type that does not apply;
  * a target file system without room for the projected output (a 1 MiB tmpfs): exit 3;
  * an unwritable target (a read-only mount, a path under a file, a directory without write
    permission): exit 2.

Afterwards the target holds nothing: no output, no temporary, no lock file, no store directory.
--no-preflight skips the free-space check alone (the conversion then runs into ENOSPC, exit 3,
and still leaves nothing behind). The tmpfs cases need mount(2) (root); they are skipped without it.
"""
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest


def run_timed(stquant, *args):
    start = time.monotonic()
    p = subprocess.run([str(stquant), *map(str, args)], capture_output=True, text=True, timeout=30)
    return p, time.monotonic() - start


def assert_fails_fast(p, elapsed, rc, *expect):
    assert p.returncode == rc, p.stderr
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert p.stderr.startswith("stquant: error: ") and p.stderr.count("\n") == 1, p.stderr
    for want in expect:
        assert want in p.stderr, (want, p.stderr)


def entries(path: Path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only) -> an empty tmpfs directory, unmounted at the end."""
    mounted = []

    def make(size="1m", read_only=False):
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def sharded_model(repo_root, dst: Path) -> Path:
    shutil.copytree(repo_root / "examples" / "tiny-model", dst)
    return dst


@pytest.mark.parametrize("layout", ["mlx", "ollama"])
def test_missing_shard_named_by_the_index(stquant, repo_root, tmp_path, layout):
    src = sharded_model(repo_root, tmp_path / "src")
    shards = sorted(src.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()
    target = ["-o", tmp_path / "out"] if layout == "mlx" else ["--layout", "ollama", "--name", "m", "--models-dir",
                                                              tmp_path / "out"]
    p, elapsed = run_timed(stquant, "convert", src, *target, "-q", "int4")
    assert_fails_fast(p, elapsed, 2, "model.safetensors.index.json", shards[-1].name, "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no output, no temporary beside it


def test_missing_numbered_shard_without_index(stquant, repo_root, tmp_path):
    src = sharded_model(repo_root, tmp_path / "src")
    (src / "model.safetensors.index.json").unlink()
    first = sorted(src.glob("model-*.safetensors"))[0]
    first.unlink()
    p, elapsed = run_timed(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4")
    assert_fails_fast(p, elapsed, 2, f"no '{first.name}'", "is missing (incomplete download?)")
    assert sorted(os.listdir(tmp_path)) == ["src"]
    # inspect reports the same.
    p, _ = run_timed(stquant, "inspect", src)
    assert p.returncode == 2 and first.name in p.stderr


def test_requested_type_that_does_not_apply(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures/hf/tiny-llama"
    p, elapsed = run_timed(stquant, "convert", src, "-o", tmp_path / "out", "-q", "mxfp4", "--recipe", "mixed_3_6")
    assert_fails_fast(p, elapsed, 2, "--recipe needs an affine quantization type")
    assert not (tmp_path / "out").exists()
    p, elapsed = run_timed(stquant, "convert", src, "--layout", "ollama", "--name", "m", "--models-dir",
                           tmp_path / "store", "-q", "int3")
    assert_fails_fast(p, elapsed, 2, "supported types are int4, int8, nvfp4, mxfp4, mxfp8")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("layout", ["mlx", "ollama"])
def test_target_without_room(stquant, shared_dir, mount, layout):
    disk = mount("1m")
    src = shared_dir / "fixtures/hf/tiny-llama"  # 2.8 MiB of BF16: more than the tmpfs holds
    target = ["-o", disk / "out"] if layout == "mlx" else ["--layout", "ollama", "--name", "m", "--models-dir",
                                                           disk / "store"]
    p, elapsed = run_timed(stquant, "convert", src, *target)
    what = f"'{disk / 'out'}'" if layout == "mlx" else f"model 'm' in the ollama model store '{disk / 'store'}'"
    assert_fails_fast(p, elapsed, 3, "preflight: not enough free space", what, "would take 2.",
                      f"the file system of '{disk}' has 1.00 MiB (1048576 bytes) available", "nothing was written",
                      "--no-preflight")
    assert entries(disk) == []
    # --no-preflight: the conversion starts, runs into ENOSPC (exit 3) and cleans up after itself.
    p, _ = run_timed(stquant, "convert", src, *target, "--no-preflight", "--quiet")
    assert p.returncode == 3 and "No space left on device" in p.stderr, p.stderr
    files = [f for f in disk.rglob("*") if f.is_file()]
    if layout == "mlx":
        assert files == []
    else:
        # No manifest, no temporary: only complete blobs written before the disk filled up (content-
        # addressed orphans, which `stquant ollama gc` collects).
        for f in files:
            if f == disk / "store" / ".stquant-gc.lock":  # the store's own, permanent (empty)
                continue
            assert f.parent == disk / "store" / "blobs" and f.name.startswith("sha256-"), f
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name[7:]
    # What fits, converts: int4 is 0.8 MiB.
    if layout == "mlx":
        p, _ = run_timed(stquant, "convert", src, *target, "-q", "int4", "--quiet")
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("layout", ["mlx", "ollama"])
def test_read_only_target(stquant, shared_dir, mount, layout):
    disk = mount("16m", read_only=True)
    src = shared_dir / "fixtures/hf/tiny-llama"
    target = ["-o", disk / "a" / "out"] if layout == "mlx" else ["--layout", "ollama", "--name", "m", "--models-dir",
                                                                 disk / "store"]
    p, elapsed = run_timed(stquant, "convert", src, *target, "-q", "int4")
    assert_fails_fast(p, elapsed, 2, "preflight: cannot write", f"'{disk}' is on a read-only file system",
                      "nothing was written")
    assert entries(disk) == []


def test_unwritable_directory(stquant, shared_dir, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into any directory (the read-only mount case covers root)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        p, elapsed = run_timed(stquant, "convert", shared_dir / "fixtures/hf/tiny-llama", "-o", locked / "sub" / "out")
        assert_fails_fast(p, elapsed, 2, f"directory '{locked}' is not writable")
        assert entries(locked) == []
    finally:
        locked.chmod(0o755)


def test_room_enough_converts(stquant, shared_dir, mount):
    disk = mount("8m")
    p, _ = run_timed(stquant, "convert", shared_dir / "fixtures/hf/tiny-llama", "-o", disk / "out", "--quiet")
    assert p.returncode == 0, p.stderr
    assert (disk / "out" / "model.safetensors").is_file()
