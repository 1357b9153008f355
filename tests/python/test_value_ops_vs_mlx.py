"""The architecture table's value ops (`add`, `multiply`: e.g. Qwen3-Next's norms + 1.0) against
pip MLX, on fresh random inputs: `(x + c).astype(d)` and `(x * c).astype(d)` for x of bfloat16,
float16 and float32 (MLX rounds the Python float c to x's dtype first, computes in float32 and
rounds back), byte for byte, but for NaN results (inf + -inf), which must be NaN in both: MLX's
float16 -> float32 cast sets the quiet bit of a NaN's payload, stquant's codec keeps it (a codec
detail no weight meets). tools/value_ops_dump applies the converter's own code
(output/planned_rows.h ApplyValueOps) to every tensor of a file."""
import subprocess

import mlx.core as mx
import numpy as np
import pytest

DTYPES = {"bf16": mx.bfloat16, "f16": mx.float16, "f32": mx.float32}


def random_values(rng, dtype) -> mx.array:
    # Normal values of every magnitude, subnormals, zeros of both signs, infinities, the largest
    # finite values: every class the rounding meets.
    x = rng.standard_normal(50000).astype(np.float32) * np.exp2(rng.integers(-30, 30, 50000)).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -3e-39, 65504.0, 3.38e38, 1.0, -1.0], np.float32)
    return mx.array(np.concatenate([x, specials])).astype(dtype)


@pytest.mark.parametrize("op", ["add", "multiply"])
@pytest.mark.parametrize("source", list(DTYPES))
@pytest.mark.parametrize("target", list(DTYPES))
def test_value_op_equals_mlx(build_dir, tmp_path, op, source, target):
    rng = np.random.default_rng(abs(hash((op, source, target))) % 2**32)
    x = random_values(rng, DTYPES[source])
    src = tmp_path / "in.safetensors"
    mx.save_safetensors(str(src), {"x": x})
    # Constants: the ones the table uses, and random doubles (whose float32 -> dtype rounding differs
    # from a direct double -> dtype one for some).
    constants = [1.0, 0.5, 0.1, -2.5e-3, 1e30, 65519.0, 3.0000001] + list(rng.standard_normal(5) * 10.0)
    for c in constants:
        out = tmp_path / "out.safetensors"
        proc = subprocess.run([str(build_dir / "tools" / "value_ops_dump"), str(src), str(out), op, repr(float(c)), target],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        ours = mx.load(str(out))["x"]
        theirs = ((x + c) if op == "add" else (x * c)).astype(DTYPES[target])
        assert ours.dtype == theirs.dtype
        nan = np.isnan(np.array(theirs.astype(mx.float32)))
        assert (np.isnan(np.array(ours.astype(mx.float32))) == nan).all(), f"{op} {c!r} {source}->{target}: NaNs differ"
        width = {"bf16": mx.uint16, "f16": mx.uint16, "f32": mx.uint32}[target]
        a, b = np.array(ours.view(width))[~nan], np.array(theirs.view(width))[~nan]
        assert (a == b).all(), f"{op} {c!r} {source}->{target}: {np.count_nonzero(a != b)} values differ"
