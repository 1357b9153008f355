"""The numeric codecs (src/numeric) against independent references, through tools/codec_dump:
exhaustive over all 65536 bf16 and f16 codes and all 256 8-bit codes, and float32 -> bf16 / f16 /
E4M3 over every float32 value of interest (all bf16/f16 rounding ties, subnormals, saturation,
and a large random sample), compared with ml_dtypes / numpy and with pip MLX's to_fp8/from_fp8."""
import subprocess

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file


@pytest.fixture(scope="module")
def dumped(build_dir, tmp_path_factory):
    tool = build_dir / "tools" / "codec_dump"
    assert tool.is_file(), f"{tool} missing (build the codec_dump target)"
    tmp = tmp_path_factory.mktemp("codecs")
    rng = np.random.default_rng(0)
    all16 = np.arange(65536, dtype=np.uint32)
    # float32 probes: every bf16 value and every midpoint between neighbours (the ties), every f16
    # value and midpoint, E4M3 values and midpoints, specials, and random bit patterns.
    bf16_values = (all16 << 16).view(np.float32)
    bf16_ties = ((all16 << 16) | 0x8000).view(np.float32)
    f16_values = all16.astype(np.uint16).view(np.float16).astype(np.float32)
    f16_next = (all16.astype(np.uint16) + np.uint16(1)).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        f16_ties = ((f16_values.astype(np.float64) + f16_next.astype(np.float64)) / 2).astype(np.float32)
    rand = rng.integers(0, 2**32, 2**20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    probes = np.concatenate([bf16_values, bf16_ties, f16_values, f16_ties, rand,
                             np.array([448, 449, 464, 479, 480, 600, np.inf, -np.inf, np.nan, -np.nan, 2**-10,
                                       1.5 * 2**-9, 2**-6, -0.0, 65504, 65520, 65519.99, 1e-8], np.float32)])
    probes = probes[np.isfinite(probes) | np.isnan(probes) | np.isinf(probes)]
    codes8 = np.arange(256, dtype=np.uint8)
    inp = tmp / "in.safetensors"
    save_file({"f32": probes, "u16": all16.astype(np.uint16), "u8": codes8}, str(inp))
    out = tmp / "out.safetensors"
    subprocess.run([str(tool), str(inp), str(out)], check=True)
    return probes, load_file(str(out))


def test_bf16_decode_all_codes(dumped):
    _, out = dumped
    expected = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(out["u16.bf16_to_f32"].view(np.uint32), expected.view(np.uint32))


def test_f16_decode_all_codes(dumped):
    _, out = dumped
    expected = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    assert np.array_equal(out["u16.f16_to_f32"].view(np.uint32), expected.view(np.uint32))


def test_bf16_encode_matches_ml_dtypes_and_mlx(dumped):
    probes, out = dumped
    ours = out["f32.to_bf16"]
    finite = ~np.isnan(probes)
    expected = probes.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(ours[finite], expected[finite])
    # NaN: MLX's CPU type writes the canonical 0x7FC0 whatever the sign and payload.
    assert np.all(ours[~finite] == 0x7FC0)
    mlx_bits = np.array(mx.array(probes[finite]).astype(mx.bfloat16).view(mx.uint16))
    assert np.array_equal(ours[finite], mlx_bits)


def test_f16_encode_matches_numpy_and_mlx(dumped):
    probes, out = dumped
    ours = out["f32.to_f16"]
    finite = ~np.isnan(probes)
    with np.errstate(over="ignore"):
        expected = probes.astype(np.float16).view(np.uint16)
    assert np.array_equal(ours[finite], expected[finite])
    mlx_bits = np.array(mx.array(probes[finite]).astype(mx.float16).view(mx.uint16))
    assert np.array_equal(ours[finite], mlx_bits)


def test_e4m3_encode_matches_mlx_to_fp8(dumped):
    probes, out = dumped
    expected = np.array(mx.to_fp8(mx.array(probes)))
    assert np.array_equal(out["f32.to_e4m3"], expected)


def test_8bit_decoders(dumped):
    _, out = dumped
    codes = np.arange(256, dtype=np.uint8)
    # pip MLX (>= 0.32.3) decodes 0x7F/0xFF as NaN, like E4M3FN; MLX <= 0.32.2 read +-480 (the
    # golden vectors check that decoder, tests/numeric).
    mlx_e4m3 = np.array(mx.from_fp8(mx.array(codes), mx.float32))
    nan = np.isnan(mlx_e4m3)
    assert list(np.nonzero(nan)[0]) == [0x7F, 0xFF]
    assert np.array_equal(out["u8.e4m3fn_to_f32"][~nan].view(np.uint32), mlx_e4m3[~nan].view(np.uint32))
    assert np.all(np.isnan(out["u8.e4m3fn_to_f32"][nan]))
    assert np.array_equal(out["u8.e4m3_to_f32"][~nan], mlx_e4m3[~nan])
    assert list(out["u8.e4m3_to_f32"][nan]) == [480.0, -480.0]
    e5m2 = codes.view(ml_dtypes.float8_e5m2).astype(np.float32)
    nan = np.isnan(e5m2)
    assert np.array_equal(out["u8.e5m2_to_f32"][~nan], e5m2[~nan]) and np.all(np.isnan(out["u8.e5m2_to_f32"][nan]))
    e8m0 = np.ldexp(np.float64(1), codes.astype(np.int64) - 127)
    with np.errstate(over="ignore"):
        assert np.array_equal(out["u8.e8m0_to_f32"], e8m0.astype(np.float32))
    lut = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    assert np.array_equal(out["u8.e2m1_to_f32"].view(np.uint32), lut[codes & 0xF].view(np.uint32))
