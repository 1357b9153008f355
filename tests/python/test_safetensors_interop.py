"""Interop of stquant's safetensors Reader/Writer with Python `safetensors` and MLX.

tools/st_copy re-writes a file through our Reader and Writer. Files it writes must load in
`safetensors.numpy` and `mlx.core` with identical values; files written by those libraries
(Python's padded headers, MLX's unpadded ones with "__metadata__": null) must come through it
unchanged.
"""
import json
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

# dtype name -> numpy dtype, for what safetensors.numpy can both save and load.
NUMPY_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
}
# What mlx.core.load refuses among NUMPY_DTYPES (it has no float64).
MLX_UNSUPPORTED = {"F64"}
SHAPES = [(), (0,), (3, 0, 2), (5,), (4, 7)]


@pytest.fixture(scope="module")
def st_copy(build_dir: Path) -> Path:
    path = build_dir / "tools" / "st_copy"
    if not path.exists():
        pytest.fail(f"{path} not built (cmake --build {build_dir} --target st_copy)")
    return path


def run_copy(st_copy: Path, src: Path, dst: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(st_copy), str(src), str(dst), *args], capture_output=True, text=True, timeout=60)


def copy_ok(st_copy: Path, src: Path, dst: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run_copy(st_copy, src, dst, *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def raw_file(path: Path):
    """(header dict, header length, data bytes): an independent minimal parser."""
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), length, blob[8 + length :]


def raw_tensors(path: Path):
    """name -> (dtype, shape, bytes), and the metadata, straight from the file."""
    header, _, data = raw_file(path)
    metadata = header.pop("__metadata__", None)
    tensors = {
        name: (e["dtype"], tuple(e["shape"]), data[e["data_offsets"][0] : e["data_offsets"][1]])
        for name, e in header.items()
    }
    return tensors, metadata


def write_raw(path: Path, tensors, metadata=None, pad=True):
    """A safetensors file from name -> (dtype, shape, bytes), in the given order."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(t[2] for t in tensors.values()))


def sample(dtype, shape, seed):
    return np.asarray(_sample(dtype, shape, seed))  # 0-d results come back as numpy scalars


def _sample(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype == np.complex64:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def numpy_tensors():
    out = {}
    for i, (name, dtype) in enumerate(NUMPY_DTYPES.items()):
        for j, shape in enumerate(SHAPES):
            out[f"{name.lower()}.{j}"] = sample(dtype, shape, 100 * i + j)
    return out


def mlx_bytes(array) -> bytes:
    mx.eval(array)
    return bytes(memoryview(array))


def assert_same_arrays(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


def test_python_written_file_round_trips(st_copy, tmp_path):
    tensors = numpy_tensors()
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "np", "note": "h\u00e9llo"})
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert_same_arrays(load_file(tmp_path / "out.safetensors"), tensors)
    with safe_open(tmp_path / "out.safetensors", framework="numpy") as f:
        assert f.metadata() == {"format": "np", "note": "h\u00e9llo"}


def test_our_file_loads_in_mlx(st_copy, tmp_path):
    tensors = {k: v for k, v in numpy_tensors().items() if k.split(".")[0].upper() not in MLX_UNSUPPORTED}
    save_file(tensors, tmp_path / "in.safetensors")
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors", "--metadata", "k=v")
    loaded, metadata = mx.load(str(tmp_path / "out.safetensors"), return_metadata=True)
    assert metadata == {"k": "v"}
    assert sorted(loaded) == sorted(tensors)
    for name, array in tensors.items():
        assert tuple(loaded[name].shape) == array.shape, name
        assert mlx_bytes(loaded[name]) == array.tobytes(), name


def test_mlx_written_file_round_trips(st_copy, tmp_path):
    arrays = {
        "bf16": mx.array(np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 3, dtype=mx.bfloat16),
        "f16": mx.array([1.5, -2.25, 65504.0], dtype=mx.float16),
        "f32.scalar": mx.array(3.25),
        "f32.empty": mx.zeros((0, 4)),
        "u32": mx.array([0, 1, 2**32 - 1], dtype=mx.uint32),
        "i64": mx.array([-(2**63), 2**63 - 1], dtype=mx.int64),
        "bool": mx.array([True, False, True]),
        "c64": mx.array([1 + 2j, -3j], dtype=mx.complex64),
    }
    mx.save_safetensors(str(tmp_path / "in.safetensors"), arrays)
    # MLX writes no padding and "__metadata__": null; our reader must take both.
    header, length, _ = raw_file(tmp_path / "in.safetensors")
    assert header["__metadata__"] is None
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")

    loaded = mx.load(str(tmp_path / "out.safetensors"))
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        assert mlx_bytes(loaded[name]) == mlx_bytes(array), name
    # Python safetensors reads it too, bit for bit.
    numpy_loaded = load_file(tmp_path / "out.safetensors")
    for name, array in arrays.items():
        assert numpy_loaded[name].tobytes() == mlx_bytes(array), name
    # null metadata is "no metadata": we write no __metadata__ key at all.
    out_header, _, _ = raw_file(tmp_path / "out.safetensors")
    assert "__metadata__" not in out_header


def test_mlx_metadata_is_kept_and_extended(st_copy, tmp_path):
    mx.save_safetensors(str(tmp_path / "in.safetensors"), {"a": mx.array([1, 2], dtype=mx.uint8)},
                        metadata={"format": "mlx", "k": "old"})
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors", "--metadata", "k=new",
            "--metadata", "extra=a=b")
    _, metadata = mx.load(str(tmp_path / "out.safetensors"), return_metadata=True)
    assert metadata == {"format": "mlx", "k": "new", "extra": "a=b"}


def test_every_spec_dtype_byte_exact(st_copy, tmp_path):
    # FP8, FP6 and FP4 have no numpy loader; compare raw bytes with an independent parser.
    rng = np.random.default_rng(7)
    tensors = {}
    for dtype, bits in [("F8_E4M3", 8), ("F8_E5M2", 8), ("F8_E8M0", 8), ("F6_E2M3", 6), ("F6_E3M2", 6),
                        ("F4", 4), ("BF16", 16), ("C64", 64), ("F64", 64)]:
        for shape in [(4,), (3, 8), (0, 5)]:
            nbytes = int(np.prod(shape)) * bits // 8
            tensors[f"{dtype}.{len(tensors)}"] = (dtype, shape, rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    # Listed in reverse data order in the JSON, which is valid.
    write_raw(tmp_path / "in.safetensors", dict(reversed(list(tensors.items()))), metadata={"m": "1"}, pad=False)
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    got, metadata = raw_tensors(tmp_path / "out.safetensors")
    assert metadata == {"m": "1"}
    assert got == tensors


def test_our_header_is_compact_sorted_and_padded(st_copy, tmp_path):
    save_file(numpy_tensors(), tmp_path / "in.safetensors", metadata={"z": "1"})
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    blob = (tmp_path / "out.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    assert length % 8 == 0
    text = blob[8 : 8 + length].decode()
    body = text.rstrip(" ")
    assert set(text[len(body) :]) <= {" "} and len(text) - len(body) < 8
    header = json.loads(body)
    assert body == json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # Data offsets are contiguous, follow the input's data order, and end at the end of the file.
    entries = sorted((e["data_offsets"] for k, e in header.items() if k != "__metadata__"))
    end = 0
    for begin, stop in entries:
        assert begin == end
        end = stop
    assert 8 + length + end == len(blob)


def test_st_copy_is_deterministic(st_copy, tmp_path):
    save_file(numpy_tensors(), tmp_path / "in.safetensors")
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "a.safetensors")
    copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "b.safetensors")
    copy_ok(st_copy, tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    a = (tmp_path / "a.safetensors").read_bytes()
    assert a == (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "c.safetensors").read_bytes()


def test_truncated_file_is_refused_and_nothing_is_written(st_copy, tmp_path):
    save_file({"w": np.ones((16, 16), dtype=np.float32)}, tmp_path / "in.safetensors")
    blob = (tmp_path / "in.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-10])
    proc = run_copy(st_copy, tmp_path / "cut.safetensors", tmp_path / "out.safetensors")
    assert proc.returncode == 2
    assert "tensor 'w': data_offsets [0, 1024] end past data section of 1014 bytes" in proc.stderr
    assert "(incomplete download or corrupt file?)" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "in.safetensors"]


def test_trailing_bytes_are_a_warning_and_dropped(st_copy, tmp_path):
    save_file({"w": np.arange(4, dtype=np.int32)}, tmp_path / "in.safetensors")
    with open(tmp_path / "in.safetensors", "ab") as f:
        f.write(b"\0" * 5)
    proc = copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert "5 trailing bytes after the last tensor data" in proc.stderr
    np.testing.assert_array_equal(load_file(tmp_path / "out.safetensors")["w"], np.arange(4, dtype=np.int32))


def test_gap_policy_against_the_references(st_copy, tmp_path):
    # A gap between tensors and trailing bytes: MLX loads the file, Python safetensors refuses it
    # (docs/safetensors.md, "Gap policy"). We accept it with warnings and write it gap-free.
    tensors = {"a": ("U8", (4,), b"abcd"), "b": ("U8", (4,), b"efgh")}
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
              "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}
    text = json.dumps(header).encode()
    (tmp_path / "in.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"abcd\0\0\0\0efgh\0\0")
    assert {k: bytes(memoryview(v)) for k, v in mx.load(str(tmp_path / "in.safetensors")).items()} == {
        "a": b"abcd", "b": b"efgh"}
    with pytest.raises(Exception, match="invalid offset"):
        load_file(tmp_path / "in.safetensors")

    proc = copy_ok(st_copy, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert "start 4 bytes after the previous tensor data ends at 4 (gap accepted)" in proc.stderr
    assert "2 trailing bytes after the last tensor data" in proc.stderr
    assert {k: v.tobytes() for k, v in load_file(tmp_path / "out.safetensors").items()} == {"a": b"abcd", "b": b"efgh"}
    assert raw_tensors(tmp_path / "out.safetensors") == (tensors, None)
