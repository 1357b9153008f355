"""Issue 8: hostile and malformed inputs, end to end through the real `stquant` binary.

Every case builds one malformed input (a .safetensors file, a model directory or a quantization
input) in a temp directory, runs one command on it and checks the contract of the CLI:

  * the exit code (2 for a malformed or unsupported input; 0 where the input is in fact valid),
  * stderr is exactly one line "stquant: error: <message>\\n" holding the expected substrings,
    which name the file and, where one is involved, the tensor,
  * no crash, no hang: each run finishes in under a second (a wall-clock limit of 5 s guards
    against a slow machine; the elapsed time is asserted below 1 s),
  * nothing is written: the output path does not exist afterwards, and neither does any
    temporary file beside it.

The per-rule unit tests live in tests/safetensors/header_rules_test.cc and
tests/model/inventory_test.cc; this file is the end-to-end view of the same rules (exit codes and
one-line messages from the binary), plus the quantization inputs and the hostile shapes.
test_hostile_files.py (issue 17) breaks the files themselves: FIFOs, link loops, devices, deep and
huge JSON, with time and peak RSS measured per run.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

# ---- building raw safetensors files -----------------------------------------------------------

ITEM_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "U16": 16, "I16": 16, "F16": 16,
             "BF16": 16, "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64, "F64": 64, "F4": 4}


def raw_file(path: Path, header: bytes | str, data: bytes = b"", length: int | None = None) -> Path:
    """A file with an arbitrary header text and an arbitrary (or lying) 8-byte length."""
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def st_file(path: Path, tensors: dict, metadata=None, data: bytes | None = None) -> Path:
    """A well-formed file: tensors is name -> (dtype, shape, bytes or None for zeros)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = b""
    for name, (dtype, shape, payload) in tensors.items():
        nbytes = math.prod(shape) * ITEM_BITS[dtype] // 8
        if payload is None:
            payload = bytes(nbytes)
        assert len(payload) == nbytes, name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(blob), len(blob) + nbytes]}
        blob += payload
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return raw_file(path, text, blob if data is None else data)


def bf16_bytes(values: np.ndarray) -> bytes:
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()


def bf16_matrix(rows: int, cols: int, seed: int = 0) -> bytes:
    return bf16_bytes(np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32))


def model_dir(root: Path, shards: dict, config=None, index=None) -> Path:
    """A model directory: shards is file name -> tensors (as st_file); config a dict or raw text."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama"} if config is None else config
    if isinstance(config, bytes):
        (root / "config.json").write_bytes(config)
    else:
        (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name, tensors in shards.items():
        st_file(root / name, tensors)
    if index is not None:
        (root / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return root


def weight(shape=(8, 64), dtype="BF16", payload=None):
    return (dtype, list(shape), payload)


# ---- the cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    build: Callable[[Path], list]  # returns the command-line arguments after "stquant"
    expect: list = field(default_factory=list)  # substrings of the one-line message
    rc: int = 2
    # Also run `stquant convert` on a directory case (inspect is the default command).
    convert: bool = False


def header_case(name, header, expect, data=b"", length=None, rc=2):
    def build(tmp: Path):
        return ["inspect", str(raw_file(tmp / "bad.safetensors", header, data, length))]
    return Case(name, build, ["bad.safetensors"] + expect, rc)


def entry(dtype="BF16", shape=(2, 2), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def jh(obj) -> str:
    return json.dumps(obj)


CASES: list[Case] = []

# -- safetensors: the file around the header
CASES += [
    Case("empty-file", lambda t: ["inspect", _write(t / "bad.safetensors", b"")],
         ["bad.safetensors", "shorter than the 8-byte header length"]),
    Case("short-file", lambda t: ["inspect", _write(t / "bad.safetensors", b"\x05\x00\x00")],
         ["bad.safetensors", "file is 3 bytes"]),
    header_case("header-length-0", b"", ["header length is 0"], data=b"{}"),
    header_case("header-length-huge", b"{}", ["exceeds the limit of 100000000 bytes"], length=2**63 + 5),
    header_case("header-length-just-over-limit", b"{}", ["header length 100000001 exceeds"], length=100_000_001),
    header_case("header-length-past-eof", b"{}", ["header length 4096 past end of file"], length=4096),
    header_case("truncated-data", jh({"w": entry(shape=(4, 4), offsets=(0, 32))}),
                ["tensor 'w'", "end past data section of 16 bytes"], data=bytes(16)),
    header_case("huge-tensor-small-file", jh({"w": entry(shape=(1, 2**40), offsets=(0, 2**41))}),
                ["tensor 'w'", "end past data section"], data=bytes(64)),
]

# -- safetensors: the header text
CASES += [
    header_case("invalid-json", '{"w": ', ["header is not valid JSON"]),
    header_case("json-trailing-garbage", '{} x', ["header is not valid JSON"]),
    header_case("invalid-utf8", b'{"w\xff": 1}', ["header is not valid UTF-8 (byte 0xff at offset 3)"]),
    header_case("utf8-surrogate", b'{"\xed\xa0\x80": 1}', ["header is not valid UTF-8"]),
    header_case("non-object-array", "[1, 2]", ["header JSON is not an object"]),
    header_case("non-object-string", '"w"', ["header JSON is not an object"]),
    header_case("duplicate-tensor", '{"w": %s, "w": %s}' % (jh(entry()), jh(entry())),
                ["duplicate tensor name 'w'"], data=bytes(8)),
    header_case("duplicate-key-in-entry",
                '{"w": {"dtype": "BF16", "dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}',
                ["tensor 'w': duplicate key 'dtype'"], data=bytes(8)),
    header_case("duplicate-metadata", '{"__metadata__": {}, "__metadata__": {}}', ["duplicate key '__metadata__'"]),
]

# -- safetensors: one tensor entry
CASES += [
    header_case("unknown-dtype", jh({"w": entry(dtype="Q4_K")}), ["tensor 'w'", "unknown dtype 'Q4_K'"],
                data=bytes(8)),
    header_case("dtype-not-string", jh({"w": {"dtype": 7, "shape": [1], "data_offsets": [0, 1]}}),
                ["tensor 'w'", "'dtype' is not a string"], data=bytes(1)),
    header_case("missing-shape", jh({"w": {"dtype": "U8", "data_offsets": [0, 1]}}),
                ["tensor 'w'", "missing 'shape'"], data=bytes(1)),
    header_case("unknown-key", jh({"w": dict(entry(), extra=1)}), ["tensor 'w'", "unknown key 'extra'"],
                data=bytes(8)),
    header_case("negative-dim", jh({"w": entry(shape=(-2, 2))}),
                ["tensor 'w'", "shape[0] is not a non-negative integer"], data=bytes(8)),
    header_case("float-dim", '{"w": {"dtype": "BF16", "shape": [2.0, 2], "data_offsets": [0, 8]}}',
                ["tensor 'w'", "shape[0] is not a non-negative integer"], data=bytes(8)),
    header_case("string-dim", jh({"w": entry(shape=("2", 2))}),
                ["tensor 'w'", "shape[0] is not a non-negative integer"], data=bytes(8)),
    header_case("huge-dim", '{"w": {"dtype": "U8", "shape": [9223372036854775808], "data_offsets": [0, 1]}}',
                ["tensor 'w'", "shape[0] = 9223372036854775808 is larger than 2^63-1"], data=bytes(1)),
    header_case("dim-beyond-uint64", '{"w": {"dtype": "U8", "shape": [1e400], "data_offsets": [0, 1]}}',
                ["header is not valid JSON"], data=bytes(1)),
    header_case("overflowing-shape", jh({"w": entry(dtype="U8", shape=(2**32, 2**32), offsets=(0, 1))}),
                ["tensor 'w'", "has more than 2^63-1 elements"], data=bytes(1)),
    header_case("end-begin-mismatch", jh({"w": entry(shape=(2, 2), offsets=(0, 6))}),
                ["tensor 'w'", "hold 6 bytes but dtype BF16 shape [2, 2] needs 8 bytes"], data=bytes(8)),
    header_case("begin-after-end", jh({"w": entry(shape=(0,), offsets=(8, 0))}),
                ["tensor 'w'", "begin is after end"], data=bytes(8)),
    header_case("offset-negative", jh({"w": entry(shape=(2, 2), offsets=(-8, 0))}),
                ["tensor 'w'", "data_offsets[0] is not a non-negative integer"], data=bytes(8)),
    header_case("offsets-not-pair", jh({"w": entry(offsets=(0, 4, 8))}),
                ["tensor 'w'", "'data_offsets' is not an array of 2 integers"], data=bytes(8)),
    header_case("offsets-overlap", jh({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}),
                ["tensor 'b'", "overlap tensor 'a'"], data=bytes(12)),
    header_case("offsets-contained", jh({"a": entry(dtype="U8", shape=(16,), offsets=(0, 16)),
                                         "b": entry(offsets=(4, 12))}),
                ["tensor 'b'", "overlap tensor 'a'"], data=bytes(16)),
    header_case("sub-byte-count", jh({"w": entry(dtype="F4", shape=(3,), offsets=(0, 2))}),
                ["tensor 'w'", "not a whole number of bytes"], data=bytes(2)),
    header_case("empty-name", jh({"": entry()}), ["empty tensor name"], data=bytes(8)),
    header_case("metadata-non-string", jh({"__metadata__": {"format": 1}}),
                ["__metadata__: value of key 'format' is not a string"]),
    header_case("metadata-nested", jh({"__metadata__": {"a": {"b": "c"}}}),
                ["__metadata__: value of key 'a' is not a string"]),
    header_case("metadata-not-object", jh({"__metadata__": ["a"]}), ["__metadata__ is not an object of strings"]),
    # A hostile name cannot break the line: control characters are escaped.
    header_case("newline-in-name", jh({"evil\nname\x1b[2J": entry(dtype="Q4")}),
                ["tensor 'evil\\x0aname\\x1b[2J'", "unknown dtype 'Q4'"], data=bytes(8)),
    # Offsets listed out of order are valid.
    header_case("offsets-out-of-order", jh({"a": entry(offsets=(8, 16)), "b": entry(offsets=(0, 8))}), [],
                data=bytes(16), rc=0),
]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# -- model directories (inspect and convert)
def dir_case(name, build_dir, expect, rc=2, convert=True):
    def build(tmp: Path):
        return ["inspect", str(build_dir(tmp / "m"))]
    return Case(name, build, expect, rc, convert)


def _symlinked_cache(root: Path) -> Path:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    st_file(blobs / "0123abcd", {"model.norm.weight": weight((64,))})
    snap = root / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(jh({"model_type": "llama"}))
    (snap / "model.safetensors").symlink_to("../../blobs/0123abcd")
    return snap


def _outside_shard(root: Path, how: str) -> Path:
    root.mkdir(parents=True)
    outside = root.parent / "outside.safetensors"
    st_file(outside, {"w": weight()})
    target = "../outside.safetensors" if how == "dotdot" else str(outside)
    return model_dir(root, {}, index={"weight_map": {"w": target}})


CASES += [
    dir_case("no-config", lambda r: (r.mkdir(), st_file(r / "model.safetensors", {"w": weight()}), r)[2],
             ["has no config.json"]),
    dir_case("config-not-json", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}}, config="{model"),
             ["config.json", "invalid JSON"]),
    dir_case("config-not-object", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}}, config="[1]"),
             ["config.json", "expected a JSON object, got array"]),
    dir_case("config-invalid-utf8", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}},
                                                        config=b'{"model_type": "ll\xffama"}'),
             ["config.json", "invalid JSON"]),
    dir_case("hf-quant-config-not-json", lambda r: (model_dir(r, {"model.safetensors": {"w": weight()}}),
                                                    (r / "hf_quant_config.json").write_text("nope"), r)[2],
             ["hf_quant_config.json", "invalid JSON"]),
    dir_case("index-not-json", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}}, index="{"),
             ["model.safetensors.index.json", "invalid JSON"]),
    dir_case("index-without-weight-map", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}},
                                                             index={"metadata": {}}),
             ["model.safetensors.index.json", "missing \"weight_map\""]),
    dir_case("index-missing-shard", lambda r: model_dir(r, {}, index={"weight_map": {"w": "model-00001-of-00002.safetensors"}}),
             ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "does not exist"]),
    dir_case("index-shard-dotdot", lambda r: _outside_shard(r, "dotdot"),
             ["model.safetensors.index.json", "'w'", "../outside.safetensors", "must be a bare file name"]),
    dir_case("index-shard-absolute", lambda r: _outside_shard(r, "absolute"),
             ["model.safetensors.index.json", "'w'", "must be a bare file name"]),
    dir_case("tensor-in-two-shards", lambda r: model_dir(r, {"model-00001-of-00002.safetensors": {"w": weight()},
                                                             "model-00002-of-00002.safetensors": {"w": weight()}}),
             ["duplicate tensor 'w'", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]),
    dir_case("index-names-absent-tensor", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}},
                                                              index={"weight_map": {"w": "model.safetensors",
                                                                                    "v": "model.safetensors"}}),
             ["tensor 'v' is indexed in 'model.safetensors'", "but not found there"]),
    dir_case("index-misses-tensor", lambda r: model_dir(r, {"model.safetensors": {"w": weight(), "v": weight()}},
                                                        index={"weight_map": {"w": "model.safetensors"}}),
             ["tensor 'v'", "is missing from", "model.safetensors.index.json"]),
    dir_case("index-wrong-shard", lambda r: model_dir(r, {"a.safetensors": {"w": weight()},
                                                          "b.safetensors": {"v": weight()}},
                                                      index={"weight_map": {"w": "b.safetensors", "v": "a.safetensors"}}),
             ["tensor", "is indexed in", "but found in"]),
    dir_case("corrupt-shard", lambda r: (model_dir(r, {}), raw_file(r / "model.safetensors", "{", b""), r)[2],
             ["model.safetensors", "header is not valid JSON"]),
    dir_case("index-newline-tensor-name", lambda r: model_dir(r, {"model.safetensors": {"w": weight()}},
                                                              index={"weight_map": {"w": "model.safetensors",
                                                                                    "x\ny": "model.safetensors"}}),
             ["tensor 'x\\x0ay' is indexed"]),
    dir_case("symlinked-hf-cache", _symlinked_cache, [], rc=0),
    # Absurd config values do not matter: the plan comes from the headers.
    dir_case("absurd-config", lambda r: model_dir(r, {"model.safetensors": {"model.norm.weight": weight((64,))}},
                                                  config={"model_type": "llama", "hidden_size": 2**62,
                                                          "num_hidden_layers": 1e300, "vocab_size": -1,
                                                          "tie_word_embeddings": "yes"}),
             [], rc=0),
]


# -- quantization inputs
def quantize_case(name, tensors, expect, args=("-q", "int4"), rc=2):
    def build(tmp: Path):
        src = st_file(tmp / "in.safetensors", tensors)
        return ["quantize", str(src), "-o", str(tmp / "out" / "q.safetensors"), *args]
    return Case(name, build, ["in.safetensors"] + expect if rc else [], rc)


def _with(values: np.ndarray, index: int, value: float) -> bytes:
    v = values.astype(np.float32).ravel().copy()
    v[index] = value
    return bf16_bytes(v)


_W = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
CASES += [
    quantize_case("nan-weight", {"w.weight": weight((4, 64), payload=_with(_W, 70, np.nan))},
                  ["tensor 'w.weight'", "NaN"]),
    quantize_case("inf-weight", {"w.weight": weight((4, 64), payload=_with(_W, 3, np.inf))},
                  ["tensor 'w.weight'", "Inf"]),
    quantize_case("nvfp4-global-scale-inf", {"w.weight": weight((4, 64), payload=_with(_W, 3, -np.inf))},
                  ["tensor 'w.weight'", "NaN or Inf"], args=("-q", "nvfp4", "--global-scale")),
    quantize_case("group-size-not-dividing", {"w.weight": weight((4, 96))},
                  ["tensor 'w.weight'", "divisible by the quantization group size 64"]),
    quantize_case("group-size-flag-not-dividing", {"w.weight": weight((4, 64))},
                  ["tensor 'w.weight'", "divisible by the quantization group size 128"],
                  args=("--mode", "affine", "--bits", "4", "--group-size", "128")),
    quantize_case("zero-rows", {"w.weight": weight((0, 64))}, [], rc=0),
    # A zero-size tensor may declare a huge last dimension: nothing may be allocated for it.
    quantize_case("zero-rows-huge-cols", {"w.weight": weight((0, 2**40))}, [], rc=0),
    quantize_case("zero-rows-huge-cols-copied", {"t": weight((0, 2**40), dtype="I32")}, [], rc=0),
    # ... but not dimensions whose non-zero product overflows the size arithmetic.
    quantize_case("huge-dims-zero-size", {"w.weight": weight((2**40, 2**40, 0))},
                  ["tensor 'w.weight'", "shape [1099511627776, 1099511627776, 0] is out of range"]),
    quantize_case("f64-weight", {"w.weight": weight((4, 64), dtype="F64")}, ["tensor 'w.weight'", "float64"]),
    quantize_case("name-collision", {"w.weight": weight((4, 64)), "w.scales": weight((4,))},
                  ["output tensor name 'w.scales' would be written twice"]),
]


def fp8_model(root: Path, weight_shape=(128, 128), scale_shape=(1, 1), scale_dtype="F32", weight_dtype="F8_E4M3",
              with_scale=True, weight_bytes: bytes | None = None) -> Path:
    tensors = {"model.layers.0.mlp.down_proj.weight": (weight_dtype, list(weight_shape), weight_bytes)}
    if with_scale:
        tensors["model.layers.0.mlp.down_proj.weight_scale_inv"] = (scale_dtype, list(scale_shape), None)
    return model_dir(root, {"model.safetensors": tensors}, config={"model_type": "qwen3"})


def convert_case(name, build_dir, expect, args=("-q", "int4"), rc=2):
    def build(tmp: Path):
        return ["convert", str(build_dir(tmp / "m")), "-o", str(tmp / "out" / "model"), *args]
    return Case(name, build, expect, rc)


def _experts(root: Path, shapes, dtype="BF16") -> Path:
    tensors = {f"model.layers.0.mlp.experts.{i}.up_proj.weight": weight(s, dtype) for i, s in enumerate(shapes)}
    return model_dir(root, {"model.safetensors": tensors}, config={"model_type": "qwen3_moe"})


_FP8_NAN = bytes([0x7F]) + bytes(128 * 128 - 1)
CASES += [
    convert_case("fp8-scale-shape-wrong", lambda r: fp8_model(r, scale_shape=(2, 1)),
                 ["tensor 'model.layers.0.mlp.down_proj.weight'", "unexpected fp8 scale", "[2, 1]", "want F32 or BF16 [1, 1]"]),
    convert_case("fp8-scale-dtype-wrong", lambda r: fp8_model(r, scale_dtype="F16"),
                 ["unexpected fp8 scale", "F16"]),
    convert_case("fp8-missing-scale", lambda r: fp8_model(r, with_scale=False),
                 ["tensor 'model.layers.0.mlp.down_proj.weight' is F8_E4M3 but has no", "_scale_inv"]),
    convert_case("fp8-e5m2", lambda r: fp8_model(r, weight_dtype="F8_E5M2", with_scale=False),
                 ["tensor 'model.layers.0.mlp.down_proj.weight' is F8_E5M2"]),
    convert_case("fp8-rank-1", lambda r: fp8_model(r, weight_shape=(128,), scale_shape=(1,)),
                 ["F8_E4M3 tensor 'model.layers.0.mlp.down_proj.weight' has rank 1"]),
    convert_case("fp8-nan-code", lambda r: fp8_model(r, weight_bytes=_FP8_NAN),
                 ["model.safetensors", "model.layers.0.mlp.down_proj.weight", "NaN"]),
    convert_case("experts-mismatched-shapes", lambda r: _experts(r, [(64, 64), (64, 128)]),
                 ["experts stacked into 'model.layers.0.mlp.switch_mlp.up_proj.weight' differ",
                  "experts.0.up_proj.weight", "experts.1.up_proj.weight"]),
    convert_case("experts-missing-index", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.experts.0.up_proj.weight": weight((64, 64)),
                                  "model.layers.0.mlp.experts.2.up_proj.weight": weight((64, 64))}},
        config={"model_type": "qwen3_moe"}),
                 ["experts of 'model.layers.0.mlp.switch_mlp.up_proj.weight' are not numbered 0..1 (expert 1 missing)"]),
    convert_case("convert-nan-weight", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.down_proj.weight": weight((4, 64), payload=_with(_W, 5, np.nan))}}),
                 ["/m: tensor 'model.layers.0.mlp.down_proj.weight'", "element 5 is nan"]),
    convert_case("convert-zero-rows-huge-cols", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.down_proj.weight": weight((0, 2**40)),
                                  "model.norm.weight": weight((0, 2**40), dtype="F32")}}), [], rc=0),
    convert_case("convert-huge-dims-zero-size", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.down_proj.weight": weight((2**40, 2**40, 0))}}),
                 ["/m: tensor 'model.layers.0.mlp.down_proj.weight'", "is out of range"]),
    convert_case("convert-zero-last-dim", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.down_proj.weight": weight((2**20, 0))}}), [], rc=0),
    convert_case("recipe-huge-layer-number", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.99999999999999999999999.mlp.down_proj.weight": weight((4, 64))}},
        config={"model_type": "llama", "num_hidden_layers": 8}), [], args=("-q", "int4", "--recipe", "mixed_3_6"),
                 rc=0),
    convert_case("recipe-num-layers-string", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.3.mlp.down_proj.weight": weight((4, 64))}},
        config={"model_type": "llama", "num_hidden_layers": "many"}),
                 ["/m: config.json: num_hidden_layers \"many\" is not a layer count"],
                 args=("-q", "int4", "--recipe", "mixed_3_6")),
    convert_case("recipe-num-layers-float", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.3.mlp.down_proj.weight": weight((4, 64))}},
        config={"model_type": "llama", "num_hidden_layers": 1e300}),
                 ["num_hidden_layers 1e+300 is not a layer count"], args=("-q", "int4", "--recipe", "mixed_3_6")),
    # Config members of the wrong type are read as missing (they used to throw: exit 1).
    convert_case("config-quant-method-not-a-string", lambda r: model_dir(
        r, {"model.safetensors": {"model.layers.0.mlp.down_proj.weight": ("F8_E4M3", [128, 128], None),
                                  "model.layers.0.mlp.down_proj.weight_scale_inv": ("F32", [1, 1], None)}},
        config={"model_type": "qwen3", "quantization_config": {"quant_method": 5, "format": [],
                                                               "weight_block_size": [128, 128]}}), [],
                 args=("--policy", "ollama"), rc=0),
]


# -- dequantize inputs (packed + scales from strangers)
def dequantize_case(name, tensors, expect, metadata=None, rc=2):
    def build(tmp: Path):
        src = st_file(tmp / "in.safetensors", tensors, metadata=metadata)
        return ["dequantize", str(src), "-o", str(tmp / "out" / "d.safetensors")]
    return Case(name, build, (["in.safetensors"] + expect) if rc else [], rc)


CASES += [
    dequantize_case("affine-scales-int8", {"w.weight": ("U32", [4, 8], None), "w.scales": ("I8", [4, 1], None),
                                           "w.biases": ("I8", [4, 1], None)},
                    ["tensor 'w.weight'", "affine scales 'w.scales' are I8"]),
    dequantize_case("affine-scales-f4", {"w.weight": ("U32", [4, 8], None), "w.scales": ("F4", [4, 2], None),
                                         "w.biases": ("F4", [4, 2], None)},
                    ["tensor 'w.weight'", "affine scales 'w.scales' are F4"]),
    dequantize_case("affine-biases-dtype-differs", {"w.weight": ("U32", [4, 8], None), "w.scales": ("F32", [4, 1], None),
                                                    "w.biases": ("U8", [4, 1], None)},
                    ["tensor 'w.weight'", "biases 'w.biases' are U8 but scales are F32"]),
    dequantize_case("affine-missing-biases", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [4, 1], None)},
                    ["tensor 'w.weight'", "affine quantization needs biases"]),
    dequantize_case("bad-quant-type", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [4, 1], None),
                                       "w.biases": ("BF16", [4, 1], None)},
                    ["tensor 'w.weight': quant_type metadata", "int7"], metadata={"quant_type": "int7"}),
    dequantize_case("bad-group-size-metadata", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [4, 1], None),
                                                "w.biases": ("BF16", [4, 1], None)},
                    ["tensor 'w.weight'", "group_size metadata 'abc' is not an integer"],
                    metadata={"quant_type": "int4", "group_size": "abc"}),
    dequantize_case("huge-packed-width", {"w.weight": ("U32", [0, 2**60], None), "w.scales": ("BF16", [0, 2**55], None),
                                          "w.biases": ("BF16", [0, 2**55], None)},
                    ["tensor 'w.weight'", "out of range"]),
    dequantize_case("leading-dims-disagree", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [2, 1], None),
                                              "w.biases": ("BF16", [2, 1], None)},
                    ["tensor 'w.weight'", "leading dims"]),
    dequantize_case("fp-scales-not-u8", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [4, 2], None)},
                    ["tensor 'w.weight'", "mxfp4 scales must be U8"], metadata={"quant_type": "mxfp4"}),
    dequantize_case("global-scale-not-f32", {"w.weight": ("U32", [4, 8], None), "w.scales": ("U8", [4, 4], None),
                                             "w.global_scale": ("BF16", [], None)},
                    ["w.global_scale", "global scale must be one F32 value"]),
]



# -- command-line paths: usage errors (exit 2) before any work, not I/O errors
def _float_file(tmp: Path) -> str:
    return str(st_file(tmp / "in.safetensors", {"w.weight": weight()}))


def _int4_file(tmp: Path) -> str:
    return str(st_file(tmp / "q.safetensors", {"w.weight": ("U32", [4, 8], None), "w.scales": ("BF16", [4, 1], None),
                                               "w.biases": ("BF16", [4, 1], None)}))


CASES += [
    Case("quantize-output-is-a-directory", lambda t: ["quantize", _float_file(t), "-o", str(t / "out"), "-q", "int4"],
         ["output '", "/out' is a directory"]),
    Case("dequantize-output-is-a-directory", lambda t: ["dequantize", _int4_file(t), "-o", str(t / "out")],
         ["output '", "/out' is a directory"]),
    Case("quantize-output-directory-missing",
         lambda t: ["quantize", _float_file(t), "-o", str(t / "out" / "no" / "x.safetensors"), "-q", "int4"],
         ["/out/no' is not a directory"]),
    Case("dequantize-output-under-a-file",
         lambda t: ["dequantize", _int4_file(t), "-o", str(t / "q.safetensors" / "x.safetensors")],
         ["q.safetensors' is not a directory"]),
    Case("quantize-input-missing", lambda t: ["quantize", str(t / "no.safetensors"), "-o", str(t / "out" / "x"), "-q", "int4"],
         ["no.safetensors': no such file or directory"]),
    Case("dequantize-input-missing", lambda t: ["dequantize", str(t / "no.safetensors"), "-o", str(t / "out" / "x")],
         ["no.safetensors': no such file or directory"]),
    Case("ollama-models-dir-is-a-file",
         lambda t: ["convert", str(model_dir(t / "m", {"model.safetensors": {"w.weight": weight()}})), "--layout", "ollama",
                    "--name", "m", "--models-dir", _float_file(t)],
         ["ollama model store '", "in.safetensors' is not a directory"]),
]


# ---- running ------------------------------------------------------------------------------------


def run_cli(stquant: Path, args: list, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = subprocess.run([str(stquant), *args], capture_output=True, cwd=cwd, timeout=5)
    return out, time.monotonic() - start


def check_error(out: subprocess.CompletedProcess, elapsed: float, case: Case, what: str) -> None:
    stderr = out.stderr.decode("utf-8", "backslashreplace")
    assert out.returncode == case.rc, f"{what}: exit {out.returncode}, stderr {stderr!r}"
    assert elapsed < 1.0, f"{what}: took {elapsed:.2f} s"
    if case.rc == 0:
        return
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"{what}: not one line: {stderr!r}"
    assert stderr.startswith("stquant: error: "), stderr
    for want in case.expect:
        assert want in stderr, f"{what}: {want!r} not in {stderr!r}"
    assert "internal error" not in stderr


def leftovers(root: Path) -> list[str]:
    """Output files or temporaries left under root/out."""
    out = root / "out"
    return sorted(str(p.relative_to(root)) for p in out.rglob("*")) if out.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(stquant, tmp_path, case):
    (tmp_path / "out").mkdir()
    args = case.build(tmp_path)
    out, elapsed = run_cli(stquant, args, tmp_path)
    check_error(out, elapsed, case, " ".join(args[:1]))
    if case.rc != 0:
        assert leftovers(tmp_path) == []
    if case.convert:
        # The same directory through convert: same message, nothing written.
        target = tmp_path / "out" / "converted"
        out, elapsed = run_cli(stquant, ["convert", args[1], "-o", str(target), "-q", "int4"], tmp_path)
        if case.rc == 0:
            assert out.returncode == 0, out.stderr
            assert target.is_dir()
        else:
            check_error(out, elapsed, case, "convert")
            assert leftovers(tmp_path) == []


def test_case_count():
    """Issue 8 asks for at least 40 malformed inputs."""
    assert sum(1 for c in CASES if c.rc != 0) >= 40


# ---- output paths: names from the input never escape the output ---------------------------------


HOSTILE_NAMES = ["../../escape.weight", "/abs/path.weight", "a/../../b.weight", "..", "x/./y.weight"]


def test_hostile_tensor_names_stay_inside_the_output(stquant, tmp_path):
    tensors = {name: weight((4, 64)) for name in HOSTILE_NAMES}
    (tmp_path / "in").mkdir()
    src = st_file(tmp_path / "in" / "in.safetensors", tensors)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = subprocess.run([str(stquant), "quantize", str(src), "-o", str(out_dir / "q.safetensors"), "-q", "int4"],
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["q.safetensors"]
    # Names are kept verbatim inside the file, as the safetensors format allows.
    from safetensors import safe_open
    with safe_open(str(out_dir / "q.safetensors"), framework="numpy") as f:
        assert "../../escape.weight" in f.keys() and "../../escape.scales" in f.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]

    # convert: the same names in a model directory.
    model = model_dir(tmp_path / "model", {"model.safetensors": tensors})
    target = tmp_path / "converted" / "model"
    out = subprocess.run([str(stquant), "convert", str(model), "-o", str(target), "-q", "int4"], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "in", "model", "out"]
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors",
                                                        "model.safetensors.index.json"]
