"""`stquant quantize` / `stquant dequantize` against pip MLX (CPU) on fresh random inputs.

Every run draws new inputs (the seed is printed in the failure message; set STQUANT_SEED to
replay one): several distributions that stress the rounding rules (normal, outliers, tiny
magnitudes, constant and zero groups, mixed signs, values near the dtype's max), 2-D and 3-D
shapes, for every mode x dtype x group size x bits. Byte equality is required.
"""
import os
import subprocess
import time

import mlx.core as mx
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

SEED = int(os.environ.get("STQUANT_SEED", time.time_ns() % (2**32)))
DTYPES = {"bf16": (ml_dtypes.bfloat16, mx.bfloat16), "f16": (np.float16, mx.float16), "f32": (np.float32, mx.float32)}
SHAPES = [(64, 256), (3, 32, 128), (1, 512), (5, 384)]
AFFINE = [(bits, gs) for bits in (2, 3, 4, 5, 6, 8) for gs in (32, 64, 128)]
FP = [("mxfp4", 4, 32), ("mxfp8", 8, 32), ("nvfp4", 4, 16)]


def sample(rng, kind, shape, np_dtype):
    n = int(np.prod(shape))
    top = float(np.finfo(np_dtype).max) if np_dtype != ml_dtypes.bfloat16 else 3.38e38
    if kind == "normal":
        x = rng.normal(0, 0.02, n)
    elif kind == "outliers":
        x = rng.normal(0, 0.02, n) * np.where(rng.random(n) < 0.01, 50.0, 1.0)
    elif kind == "tiny":
        x = rng.normal(0, 1, n) * (1e-6 if np_dtype == np.float16 else 1e-38)
    elif kind == "constant":
        x = np.repeat(rng.normal(0, 1, n // 16 + 1), 16)[:n]
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.7, 0.0, rng.normal(0, 1, n))
        x[: n // 2] = 0.0
    elif kind == "mixed":
        x = np.abs(rng.normal(0, 1, n)) * np.where(np.arange(n) % 2, -1, 1)
    elif kind == "near_max":
        x = rng.uniform(-1, 1, n) * top * 0.999
    else:
        raise ValueError(kind)
    return x.astype(np.float32).astype(np_dtype).reshape(shape)


KINDS = ["normal", "outliers", "tiny", "constant", "zeros", "mixed", "near_max"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One safetensors file per dtype holding every (kind, shape) input."""
    rng = np.random.default_rng(SEED)
    root = tmp_path_factory.mktemp("quantize_vs_mlx")
    files = {}
    for name, (np_dtype, _) in DTYPES.items():
        tensors = {}
        for kind in KINDS:
            for shape in SHAPES:
                tensors[f"{kind}.{'x'.join(map(str, shape))}"] = sample(rng, kind, shape, np_dtype)
        path = root / f"{name}.safetensors"
        save_file(tensors, str(path))
        files[name] = (path, tensors)
    return root, files


def bits_of(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32) if a.dtype.itemsize == 4 else a


def mlx_quantize(w, gs, bits, mode, global_scale):
    kwargs = {}
    if global_scale:
        kwargs["global_scale"] = mx.max(mx.abs(w)).astype(mx.float32)
    return mx.quantize(w, gs, bits, mode, **kwargs)


def run(cmd):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert proc.returncode == 0, f"seed {SEED}: {cmd}: {proc.stderr}"


COMBOS = [("affine", b, g, False) for b, g in AFFINE] + [(m, b, g, False) for m, b, g in FP] + [("nvfp4", 4, 16, True)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode,bits,gs,gscale", COMBOS, ids=lambda v: str(v))
def test_quantize_and_dequantize_equal_mlx(stquant, inputs, dtype, mode, bits, gs, gscale):
    root, files = inputs
    path, tensors = files[dtype]
    mx_dtype = DTYPES[dtype][1]
    out = root / f"{dtype}-{mode}-{bits}-{gs}-{gscale}.safetensors"
    cmd = [stquant, "quantize", path, "-o", out, "--mode", mode, "--bits", bits, "--group-size", gs]
    # Tensors whose last dim the group does not divide stay unquantized (and are checked so).
    quantizable = {k for k, v in tensors.items() if v.shape[-1] % gs == 0}
    cmd += ["--tensors", "|".join(sorted(k.replace(".", r"\.") for k in quantizable))]
    if gscale:
        cmd.append("--global-scale")
    run(cmd)
    ours = load_file(str(out))
    for name, w_np in tensors.items():
        if name not in quantizable:
            assert np.array_equal(bits_of(ours[name]), bits_of(w_np))
            continue
        w = mx.array(w_np.astype(np.float32)).astype(mx_dtype)
        ref = mlx_quantize(w, gs, bits, mode, gscale)
        ctx = f"seed {SEED}: {dtype} {mode} b{bits} g{gs} gscale={gscale} {name}"
        base = name
        assert np.array_equal(ours[base], np.array(ref[0])), ctx + " packed"
        assert np.array_equal(bits_of(ours[base + ".scales"]), bits_of(np.array(ref[1].view(mx.uint8) if mode != "affine" else ref[1].view(mx.uint16 if dtype != "f32" else mx.uint32)))), ctx + " scales"
        if mode == "affine":
            assert np.array_equal(bits_of(ours[base + ".biases"]), bits_of(np.array(ref[2].view(mx.uint16 if dtype != "f32" else mx.uint32)))), ctx + " biases"

    # Dequantize our file and compare with mx.dequantize of MLX's own quantization.
    deq = root / f"{dtype}-{mode}-{bits}-{gs}-{gscale}.dequant.safetensors"
    run([stquant, "dequantize", out, "-o", deq])
    ours_dq = load_file(str(deq))
    for name in quantizable:
        w = mx.array(tensors[name].astype(np.float32)).astype(mx_dtype)
        ref = mlx_quantize(w, gs, bits, mode, gscale)
        kwargs = {"global_scale": mx.max(mx.abs(w)).astype(mx.float32)} if gscale else {}
        biases = ref[2] if mode == "affine" else None
        expected = mx.dequantize(ref[0], ref[1], biases, gs, bits, mode, **kwargs)
        got = ours_dq[name]
        exp_np = np.array(expected.view(mx.uint16) if expected.dtype in (mx.bfloat16, mx.float16) else expected.view(mx.uint32))
        assert bits_of(got).shape == exp_np.shape
        assert np.array_equal(bits_of(got), exp_np), f"seed {SEED}: dequantize {dtype} {mode} b{bits} g{gs} {name}"
