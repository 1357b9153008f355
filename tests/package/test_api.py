"""The Python package, as installed from the wheel: stquant.quantize / dequantize against pip MLX's
mx.quantize / mx.dequantize byte for byte (numpy and mlx arrays, every mode), convert / mlx_convert /
inspect on the bundled example model, the stquant.Error hierarchy with the CLI's messages, the GIL
released during work, and the wheel's `stquant` command against the C++ executable."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest

MODES = [("affine", b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)] + [
    ("mxfp4", 4, 32), ("mxfp8", 8, 32), ("nvfp4", 4, 16)]
DTYPES = {"bfloat16": (ml_dtypes.bfloat16, mx.bfloat16), "float16": (np.float16, mx.float16),
          "float32": (np.float32, mx.float32)}


def mx_bytes(a) -> bytes:
    return bytes(np.array(a.view(mx.uint8)))


def np_bytes(a) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def random_weights(dtype_name, shape=(6, 256), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
    x[0, :7] = 0.0  # an all-zero prefix and exact values exercise the rounding edges
    return x.astype(DTYPES[dtype_name][0])


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("mode,bits,group", MODES, ids=[f"{m}{b}g{g}" for m, b, g in MODES])
def test_quantize_equals_mx_quantize(stquant_module, mode, bits, group, dtype_name):
    stq = stquant_module
    w = random_weights(dtype_name, seed=bits * 1000 + group)
    wm = mx.array(w.astype(np.float32)).astype(DTYPES[dtype_name][1])
    expected = mx.quantize(wm, group_size=group, bits=bits, mode=mode)
    from_numpy = stq.quantize(w, mode, bits, group)
    from_mlx = stq.quantize(wm, mode=mode, bits=bits, group_size=group)
    assert len(from_numpy) == len(from_mlx) == len(expected)
    for ours_np, ours_mx, theirs in zip(from_numpy, from_mlx, expected):
        assert isinstance(ours_np, np.ndarray) and isinstance(ours_mx, mx.array)
        assert ours_mx.dtype == theirs.dtype and ours_mx.shape == theirs.shape
        assert str(ours_np.dtype) == str(theirs.dtype).split(".")[-1] and ours_np.shape == tuple(theirs.shape)
        assert mx_bytes(ours_mx) == mx_bytes(theirs)
        assert np_bytes(ours_np) == mx_bytes(theirs)
    # And back: dequantize equals mx.dequantize.
    back = stq.dequantize(*from_mlx, mode=mode, bits=bits, group_size=group) if mode == "affine" else \
        stq.dequantize(from_mlx[0], from_mlx[1], mode=mode, bits=bits, group_size=group)
    theirs_back = mx.dequantize(*expected, group_size=group, bits=bits, mode=mode) if mode == "affine" else \
        mx.dequantize(expected[0], expected[1], group_size=group, bits=bits, mode=mode)
    assert back.dtype == theirs_back.dtype and mx_bytes(back) == mx_bytes(theirs_back)


def test_nvfp4_global_scale_and_defaults(stquant_module):
    stq = stquant_module
    wm = mx.array(random_weights("float32", (4, 128))).astype(mx.bfloat16)
    gs = mx.abs(wm).max().astype(mx.float32)
    expected = mx.quantize(wm, mode="nvfp4", global_scale=gs)
    ours = stq.quantize(wm, "nvfp4", global_scale=gs)
    assert [mx_bytes(a) for a in ours] == [mx_bytes(a) for a in expected]
    back = stq.dequantize(ours[0], ours[1], mode="nvfp4", global_scale=gs)
    theirs = mx.dequantize(expected[0], expected[1], mode="nvfp4", global_scale=gs)
    assert back.dtype == theirs.dtype == mx.float32 and mx_bytes(back) == mx_bytes(theirs)
    # Defaults are the mode's: affine 4 bits, group 64.
    assert [mx_bytes(a) for a in stq.quantize(wm)] == [mx_bytes(a) for a in mx.quantize(wm)]
    # Rank 3 (stacked experts) and a DLPack-only / buffer-protocol input.
    w3 = random_weights("float16", (2, 3, 64))
    assert np_bytes(stq.quantize(memoryview(w3))[0]) == mx_bytes(mx.quantize(mx.array(w3))[0])


def test_mlx_input_is_read_without_a_copy(stquant_module):
    # A 64 MiB float32 mx.array, in a fresh interpreter (ru_maxrss is a peak over the process's
    # life): the extension reads mx's buffer through DLPack, so the peak grows by the outputs
    # (int8: 16.5 MiB, and as much again for their mx copies), not by another 64 MiB of input.
    script = """if True:
        import resource, mlx.core as mx, stquant
        w = mx.random.normal((4096, 4096)); mx.eval(w)
        stquant.quantize(mx.zeros((2, 64)), "affine", 8, 64)  # load everything first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = stquant.quantize(w, "affine", 8, 64)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ)
    assert p.returncode == 0, p.stderr
    grown = int(p.stdout)
    assert 16 << 20 < grown < 48 << 20, grown


@pytest.mark.parametrize("call,cls,message", [
    (lambda s, w, o: s.quantize(w, "bogus"), "InvalidArgumentError", "[quantize] Invalid quantization mode 'bogus'."),
    (lambda s, w, o: s.quantize(w, "mxfp4", 8), "InvalidArgumentError", "[quantize] "),
    (lambda s, w, o: s.quantize(w, "affine", 4, 48), "InvalidArgumentError", "group size 48 is not supported"),
    (lambda s, w, o: s.quantize(w[0], "affine"), "InvalidArgumentError", "[quantize]"),
    (lambda s, w, o: s.quantize(w[:, :100], "affine"), "InvalidArgumentError", "[quantize]"),
    (lambda s, w, o: s.quantize(w.astype(np.int32)), "InvalidArgumentError", "[quantize]"),
    (lambda s, w, o: s.quantize(np.full((2, 64), np.nan, np.float32)), "InvalidInputError", "NaN"),
    (lambda s, w, o: s.quantize(np.ones((128, 128), np.float32).T), "InvalidArgumentError", "contiguous"),
    (lambda s, w, o: s.dequantize(np.zeros((2, 8), np.uint32), np.zeros((2, 3), np.float16), np.zeros((2, 3), np.float16)),
     "InvalidArgumentError", "[dequantize]"),
    (lambda s, w, o: s.inspect("/no/such/file.safetensors"), "InputError", "/no/such/file.safetensors"),
    (lambda s, w, o: s.convert("/no/such/model", o), "InvalidArgumentError", "'/no/such/model' does not exist"),
    (lambda s, w, o: s.convert("examples/tiny-model", o, q="int7"), "InvalidArgumentError", "int7"),
    (lambda s, w, o: s.convert("examples/tiny-model", None, q="q5", layout="ollama", name="x"), "InvalidArgumentError",
     'unsupported --quantize "q5": supported types are int4, int8, nvfp4, mxfp4, mxfp8'),
    (lambda s, w, o: s.mlx_convert("examples/tiny-model", o, quantize=True, dequantize=True),
     "InvalidArgumentError", "Choose either quantize or dequantize, not both."),
])
def test_bad_arguments_raise_error_subclasses(stquant_module, repo_root, tmp_path, call, cls, message, monkeypatch):
    monkeypatch.chdir(repo_root)
    stq = stquant_module
    with pytest.raises(stq.Error) as info:
        call(stq, random_weights("float32", (4, 128)), str(tmp_path / "out"))
    assert type(info.value).__name__ == cls or isinstance(info.value, getattr(stq, cls))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2


def test_error_messages_are_the_cli_s(stquant_module, cli_binary, tmp_path, repo_root):
    """The same bad conversion through the package and the C++ executable: one message."""
    src = repo_root / "examples" / "tiny-model"
    out = tmp_path / "o"
    out.mkdir()
    p = subprocess.run([str(cli_binary), "convert", str(src), "-o", str(out), "-q", "int4"], capture_output=True, text=True)
    with pytest.raises(stquant_module.InvalidArgumentError) as info:
        stquant_module.convert(src, out, q="int4")
    assert p.returncode == 2 and p.stderr == f"stquant: error: {info.value}\n"


def test_io_failure_is_an_oserror(stquant_module, repo_root):
    # /sys refuses new files even to root: the OS fails, exit code 3.
    with pytest.raises(stquant_module.IOFailureError) as info:
        stquant_module.convert(repo_root / "examples/tiny-model", "/sys/stquant-out", q="int4", progress=False)
    assert isinstance(info.value, OSError) and info.value.exit_code == 3
    assert "/sys/" in str(info.value)


def test_convert_with_progress_callback_and_inspect(stquant_module, repo_root, tmp_path):
    seen = []
    out = tmp_path / "tiny-int4"
    summary = stquant_module.convert(repo_root / "examples" / "tiny-model", out, q="int4", progress=seen.append)
    assert summary["quantized_tensors"] > 0 and summary["shards"] == 1
    assert seen and seen[-1].bytes_done == seen[-1].bytes_total == summary["input_bytes"]
    assert seen[-1].tensors_done == seen[-1].tensors_total
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(seen, seen[1:]))
    report = stquant_module.inspect(out)
    assert report["source_kind"] == "mlx" and report["is_directory"]
    assert {q["bits"] for q in report["quantized"]} == {4, 8}  # the router at 8 bits, as mlx-lm
    # The dry run: the plan without writing.
    plan = stquant_module.convert(repo_root / "examples" / "tiny-model", tmp_path / "never", q="mxfp4", dry_run=True)
    assert plan["tensors"] and not (tmp_path / "never").exists()


def test_progress_callback_exception_is_raised_after_the_conversion(stquant_module, repo_root, tmp_path):
    def boom(p):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        stquant_module.convert(repo_root / "examples" / "tiny-model", tmp_path / "o", q="int4", progress=boom)


def test_tqdm_bar_when_installed(stquant_module, repo_root, tmp_path, capsys):
    pytest.importorskip("tqdm")
    stquant_module.convert(repo_root / "examples" / "tiny-model", tmp_path / "o", q="int8")
    assert "stquant" in capsys.readouterr().err


def test_gil_is_released_while_quantizing(stquant_module):
    wm = np.random.default_rng(0).standard_normal((8192, 8192), dtype=np.float32)  # ~50 ms a call on CI
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.monotonic())
            time.sleep(0.001)

    thread = threading.Thread(target=tick)
    thread.start()
    windows = []
    while sum(t1 - t0 for t0, t1 in windows) < 0.5 and len(windows) < 200:  # long enough to tell
        t0 = time.monotonic()
        stquant_module.quantize(wm, "affine", 4, 64, threads=1)
        windows.append((t0, time.monotonic()))
    stop.set()
    thread.join()
    inside = [t for t in stamps for t0, t1 in windows if t0 + 0.01 < t < t1 - 0.005]
    assert inside, "the background thread never ran while quantize was running"


def test_mlx_convert_output_opens_in_mlx_lm(stquant_module, repo_root, tmp_path):
    from mlx_lm import load

    out = tmp_path / "m"
    stquant_module.mlx_convert(hf_path=str(repo_root / "examples/tiny-model"), mlx_path=str(out), quantize=True,
                               q_bits=8, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    load(str(out))


def test_command_is_the_cli(stquant_module, wheel_venv, cli_binary, repo_root, tmp_path):
    """The wheel's `stquant` entry point against the C++ executable: same output, same exit codes."""
    script = wheel_venv / "bin" / "stquant"
    src = str(repo_root / "examples" / "tiny-model")
    for args in (["inspect", src, "--json"], ["convert", src, "-o", "X", "-q", "nvfp4", "--dry-run"],
                 ["convert", "/no/such", "-o", "X"], ["bogus"], ["convert", src, "-o", "X", "-q", "int4", "--quiet"]):
        results = []
        for i, exe in enumerate((script, cli_binary)):
            run_args = [str(tmp_path / f"out{i}") if a == "X" else a for a in args]
            p = subprocess.run([str(exe), *run_args], capture_output=True, text=True)
            results.append((p.returncode, p.stdout.replace(str(tmp_path / f"out{i}"), "X"), p.stderr))
        assert results[0] == results[1], args
    assert (tmp_path / "out0" / "model.safetensors").read_bytes() == (tmp_path / "out1" / "model.safetensors").read_bytes()


def test_ollama_layout_names_and_inspect_by_name(stquant_module, repo_root, tmp_path):
    store = tmp_path / "store"
    src = repo_root / "examples" / "tiny-model"
    a = stquant_module.convert(src, layout="ollama", name="tiny:q8", q="Q8", models_dir=store, progress=False)
    b = stquant_module.convert(src, layout="ollama", name="tiny:int8", q="int8", models_dir=store, progress=False)
    assert a["layers"] == b["layers"] == b["blobs_reused"]  # q8 is int8: every blob already there
    report = stquant_module.inspect("tiny:q8", models_dir=store)
    assert report["config"]["file_type"] == "int8"


def test_repo_id_from_the_hf_cache(stquant_module, repo_root, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / commit).symlink_to(repo_root / "examples" / "tiny-model")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert stquant_module.hf_hub_cache_dir() == str(tmp_path / "hub")
    assert stquant_module.resolve_model("me/tiny") == str(repo / "snapshots" / commit)
    summary = stquant_module.mlx_convert(hf_path="me/tiny", mlx_path=str(tmp_path / "m"), quantize=True, progress=False)
    assert summary["quantized_tensors"] > 0
    with pytest.raises(stquant_module.InvalidArgumentError, match="hf download me/other"):
        stquant_module.convert("me/other", tmp_path / "x")
