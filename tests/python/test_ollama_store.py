"""stquant convert --layout ollama: the ollama model store, read back the way ollama's MLX runner
reads it (ollama-create-spec §9.5), checked against pip MLX.

- every quantized tensor's bytes (packed, scales, biases) equal mx.quantize of the source tensor
  (FP8 decoded as MLX does; experts stacked) with the blob's mode and group size;
- every unquantized tensor equals its source bytes (ollama never casts a kept tensor);
- blobs are named by the sha256 of their bytes; converting twice gives the same digests; a second
  model reuses the blobs it shares; a killed run leaves no manifest and no blob under a wrong name.
"""
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

TENSOR = "application/vnd.ollama.image.tensor"
JSON = "application/vnd.ollama.image.json"
BITS = {"int4": 4, "int8": 8, "nvfp4": 4, "mxfp4": 4, "mxfp8": 8}
MODE = {"int4": "affine", "int8": "affine", "nvfp4": "nvfp4", "mxfp4": "mxfp4", "mxfp8": "mxfp8"}


def convert(stquant, src, store, name, *args, check=True):
    p = subprocess.run([str(stquant), "convert", str(src), "--layout", "ollama", "--name", name,
                        "--models-dir", str(store), "--quiet", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def manifest_path(store: Path, name: str) -> Path:
    """[namespace/]model[:tag]; no namespace is ollama's "library"."""
    model, _, tag = name.partition(":")
    namespace, _, model = model.rpartition("/")
    return store / "manifests" / "registry.ollama.ai" / (namespace or "library") / model / (tag or "latest")


def blob(store: Path, digest: str) -> Path:
    return store / "blobs" / ("sha256-" + digest.split(":")[1])


def load_model(store: Path, name: str):
    """x/mlxrunner loadTensorsFromManifest: every tensor layer, deduplicated by digest, into one
    flat map; "<x>.scale" -> "<x>_scale", "<x>.bias" -> "<x>_qbias" when "<x>.scale" exists; the
    quant type per tensor from blob metadata (per tensor, then uniform) or the shapes."""
    manifest = json.loads(manifest_path(store, name).read_text())
    tensors, quant, raw = {}, {}, {}
    seen = set()
    for layer in manifest["layers"]:
        if layer["mediaType"] != TENSOR or layer["digest"] in seen:
            continue
        seen.add(layer["digest"])
        path = blob(store, layer["digest"])
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == layer["digest"].split(":")[1]
        assert len(data) == layer["size"]
        header_len = int.from_bytes(data[:8], "little")
        assert header_len % 8 == 0  # padded
        header = json.loads(data[8:8 + header_len])
        arrays, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
        for n, a in arrays.items():
            raw[n] = (header[n]["dtype"], data[8 + header_len + header[n]["data_offsets"][0]:
                                                8 + header_len + header[n]["data_offsets"][1]])
        for n, a in arrays.items():
            if n.endswith(".scale"):
                tensors[n[:-6] + "_scale"] = a
            elif n.endswith(".bias") and n[:-5] + ".scale" in arrays:
                tensors[n[:-5] + "_qbias"] = a
            else:
                tensors[n] = a
        for n in arrays:
            if n + ".scale" in arrays:
                q = metadata.get(n + ".quant_type", metadata.get("quant_type"))
                g = metadata.get(n + ".group_size", metadata.get("group_size"))
                if q is None:  # shape inference
                    words, groups = arrays[n].shape[-1], arrays[n + ".scale"].shape[-1]
                    if arrays[n + ".scale"].dtype == mx.uint8:
                        q = {2: "nvfp4", 4: "mxfp4", 8: "mxfp8"}[words // groups]
                    else:
                        q = "int4" if words * 32 // (groups * 64) == 4 else "int8"
                if g is None:  # the type's group (ModelOpt NVFP4 blobs name no group_size)
                    g = {"nvfp4": 16, "mxfp4": 32, "mxfp8": 32}.get(q, 64)
                quant[n] = (q, int(g))
    return manifest, tensors, quant, raw


def source_arrays(src: Path):
    """name -> (dtype, raw bytes, mx array), FP8 weights decoded as MLX does (BF16)."""
    out = {}
    for shard in sorted(src.glob("*.safetensors")):
        data = shard.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        arrays = mx.load(str(shard))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            value = arrays[name]
            if info["dtype"] == "F8_E4M3":
                scale_name = name + "_scale_inv" if name + "_scale_inv" in header else name + "_scale"
                scale = np.array(arrays[scale_name].astype(mx.float32))
                w = np.array(mx.from_fp8(value, mx.float32))
                s = np.repeat(np.repeat(scale, 128, -2), 128, -1)[..., : w.shape[-2], : w.shape[-1]]
                value = mx.array((w * s).astype(np.float32)).astype(mx.bfloat16)
            out[name] = (info["dtype"], data[8 + header_len + b: 8 + header_len + e], value)
    return out


def expected_source(src, name):
    """The source of an output tensor: itself, or its experts stacked (<prefix>.<i>.<proj>.weight)."""
    if name in src:
        return src[name]
    prefix, proj = name[: name.index(".experts.") + 8], name[name.index(".experts.") + 9:]
    parts = []
    i = 0
    while f"{prefix}.{i}.{proj}" in src:
        parts.append(src[f"{prefix}.{i}.{proj}"])
        i += 1
    assert parts, name
    return parts[0][0], b"".join(p[1] for p in parts), mx.stack([p[2] for p in parts])


def check_model(store, name, src_dir, fp8_decoded=()):
    manifest, tensors, quant, raw = load_model(store, name)
    src = source_arrays(src_dir)
    outputs = [n for n in raw if not n.endswith((".scale", ".bias", ".global_scale"))]
    assert outputs
    for n in outputs:
        dtype, data, value = expected_source(src, n)
        if n in quant:
            q, g = quant[n]
            got = [tensors[n], tensors[n + "_scale"]]
            want = mx.quantize(value, group_size=g, bits=BITS[q], mode=MODE[q])
            if MODE[q] == "affine":
                got.append(tensors[n + "_qbias"])
            else:
                want = want[:2]
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and a.shape == b.shape, n
                assert bytes(memoryview(a)) == bytes(memoryview(b)), f"{n}: {q} g{g} differs from mx.quantize"
        elif dtype == "F8_E4M3":
            assert raw[n][0] == "BF16", n  # declined FP8 weights are decoded to BF16
            assert raw[n][1] == bytes(memoryview(value)), n
        else:
            assert raw[n] == (dtype, data), f"{n}: not the source bytes"
    return manifest, quant


CASES = [
    ("tiny-qwen3", "int4"),
    ("tiny-qwen3", "nvfp4"),
    ("tiny-llama", "mxfp8"),
    ("tiny-qwen3-moe", "int4"),
    ("tiny-qwen3-moe", "mxfp4"),
    ("tiny-qwen3-moe", "int8"),
    ("tiny-qwen3-fp8", None),  # block FP8 -> mxfp8 by default
    ("tiny-qwen3-fp8", "int4"),  # stquant: decode then quantize
    ("tiny-qwen3", None),
]


@pytest.mark.parametrize("fixture,qtype", CASES, ids=[f"{f}-{q}" for f, q in CASES])
def test_store_matches_mlx(stquant, shared_dir, tmp_path, fixture, qtype):
    src = shared_dir / "fixtures" / "hf" / fixture
    convert(stquant, src, tmp_path, "m", *(["-q", qtype] if qtype else []))
    manifest, quant = check_model(tmp_path, "m", src)
    config = json.loads(blob(tmp_path, manifest["config"]["digest"]).read_text())
    expected_type = qtype or ("mxfp8" if fixture.endswith("fp8") else "")
    assert config["model_format"] == "safetensors" and config["file_type"] == expected_type
    assert config["requires"] == "0.19.0"
    assert config["capabilities"][0] == "completion"
    if expected_type:
        assert quant, "nothing quantized"
    else:
        assert not quant
    # Config layers: every *.json but the index, sorted, after the tensors.
    jsons = [l["name"] for l in manifest["layers"] if l["mediaType"] == JSON]
    assert jsons == sorted(p.name for p in src.glob("*.json") if p.name != "model.safetensors.index.json")
    for l in manifest["layers"]:
        if l["mediaType"] == JSON:
            assert blob(tmp_path, l["digest"]).read_bytes() == (src / l["name"]).read_bytes()
    # Layer names are the tensor / group names; routers, norms and embeddings kept.
    names = [l["name"] for l in manifest["layers"] if l["mediaType"] == TENSOR]
    assert len(names) == len(set(names))
    if expected_type:
        assert not any(n.endswith("norm.weight") or "embed_tokens" in n or n.endswith("mlp.gate.weight")
                       for n in quant)
    if fixture == "tiny-qwen3-moe":
        assert not any(".experts.0." in n for n in names)
        assert any(n.endswith(".mlp.experts.down_proj.weight") or n.endswith(".mlp.experts") for n in names)


def test_moe_expert_blob_is_uniform_group(stquant, shared_dir, tmp_path):
    """With a uniform type (mxfp4: stacked experts are never promoted) a layer's stacked
    projections share one blob named after the group prefix, in sorted projection order."""
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3-moe"
    convert(stquant, src, tmp_path, "m", "-q", "mxfp4")
    manifest = json.loads(manifest_path(tmp_path, "m").read_text())
    groups = [l for l in manifest["layers"] if l.get("name", "").endswith(".mlp.experts")]
    assert groups
    data = blob(tmp_path, groups[0]["digest"]).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"] == {"quant_type": "mxfp4", "group_size": "32"}
    prefix = groups[0]["name"]
    assert sorted(k for k in header if k != "__metadata__") == sorted(
        f"{prefix}.{p}_proj.weight{s}" for p in ("down", "gate", "up") for s in ("", ".scale"))
    assert len(header[f"{prefix}.gate_proj.weight"]["shape"]) == 3


def test_deterministic_digests(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3-moe"
    convert(stquant, src, tmp_path / "a", "m", "-q", "int4")
    convert(stquant, src, tmp_path / "b", "m", "-q", "int4")
    assert manifest_path(tmp_path / "a", "m").read_bytes() == manifest_path(tmp_path / "b", "m").read_bytes()
    # Converting again into the same store reuses every blob and writes the same manifest.
    before = manifest_path(tmp_path / "a", "m").read_bytes()
    convert(stquant, src, tmp_path / "a", "m", "-q", "int4")
    assert manifest_path(tmp_path / "a", "m").read_bytes() == before


def test_second_model_reuses_shared_blobs(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    convert(stquant, src, tmp_path, "a", "-q", "int4")
    blobs_a = {p.name for p in (tmp_path / "blobs").iterdir()}
    p = convert(stquant, src, tmp_path, "b:v1", "-q", "int8", check=False)
    assert p.returncode == 0, p.stderr
    a = json.loads(manifest_path(tmp_path, "a").read_text())
    b = json.loads(manifest_path(tmp_path, "b:v1").read_text())
    shared = {l["digest"] for l in a["layers"]} & {l["digest"] for l in b["layers"]}
    # Norms, embeddings, config files and int8-in-both tensors (v/k/down, lm_head) are identical.
    assert len(shared) >= 10
    blobs = {p.name for p in (tmp_path / "blobs").iterdir()}
    digests = {l["digest"] for l in a["layers"] + b["layers"]} | {a["config"]["digest"], b["config"]["digest"]}
    assert blobs == {"sha256-" + d.split(":")[1] for d in digests}  # one file per digest, no leftovers
    assert blobs_a <= blobs


def written_bytes(directory):
    """Bytes of the files in `directory` (a running import renames and removes them meanwhile)."""
    total = 0
    for p in directory.iterdir() if directory.is_dir() else ():
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def test_killed_run_leaves_no_model(stquant, build_dir, tmp_path):
    tool = build_dir / "tools" / "make_synthetic_model"
    if not tool.is_file():
        pytest.skip("make_synthetic_model not built")
    src = tmp_path / "big"
    subprocess.run([str(tool), "--out", str(src), "--target-bytes", str(400 << 20), "--shard-bytes", str(100 << 20)],
                   check=True, capture_output=True)
    store = tmp_path / "store"
    proc = subprocess.Popen([str(stquant), "convert", str(src), "--layout", "ollama", "--name", "big",
                             "--models-dir", str(store), "-q", "int4", "--quiet", "-j", "1"])
    # Killed once 32 MiB are written (blobs or temporaries): the import of 400 MB takes ~0.3 s warm.
    deadline = time.time() + 60
    while time.time() < deadline:
        if written_bytes(store / "blobs") >= 32 << 20:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "conversion finished before it could be killed (make the model bigger)"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store / "manifests").exists() or not any(p.is_file() for p in (store / "manifests").rglob("*"))
    for p in (store / "blobs").iterdir():
        if p.name.startswith("sha256-"):
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name[7:], f"{p.name}: partial blob"
    # A new run completes, and removes the dead run's temporary files.
    convert(stquant, src, store, "big", "-q", "int4")
    assert manifest_path(store, "big").is_file()
    assert all(p.name.startswith("sha256-") for p in (store / "blobs").iterdir())


def test_modelfile_layers_and_errors(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {src}\nTEMPLATE \"\"\"{{{{ .Prompt }}}}\"\"\"\nSYSTEM be brief\nPARAMETER temperature 0.7\n"
                  "PARAMETER stop a\nPARAMETER stop b\nPARSER custom\n")
    p = subprocess.run([str(stquant), "convert", "--layout", "ollama", "--name", "mf", "--models-dir",
                        str(tmp_path / "s"), "-f", str(mf), "--quiet"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    manifest = json.loads(manifest_path(tmp_path / "s", "mf").read_text())
    by_type = {l["mediaType"]: l for l in manifest["layers"]}
    assert blob(tmp_path / "s", by_type["application/vnd.ollama.image.template"]["digest"]).read_text() == "{{ .Prompt }}"
    assert blob(tmp_path / "s", by_type["application/vnd.ollama.image.system"]["digest"]).read_text() == "be brief"
    params = json.loads(blob(tmp_path / "s", by_type["application/vnd.ollama.image.params"]["digest"]).read_text())
    assert params["stop"] == ["a", "b"] and abs(params["temperature"] - 0.7) < 1e-6
    config = json.loads(blob(tmp_path / "s", manifest["config"]["digest"]).read_text())
    assert config["parser"] == "custom" and config["renderer"] == "qwen3-coder"
    mf.write_text(f"FROM {src}\nREQUIRES 0.14.0\n")
    p = subprocess.run([str(stquant), "convert", "--layout", "ollama", "--name", "mf2", "--models-dir",
                        str(tmp_path / "s"), "-f", str(mf)], capture_output=True, text=True)
    assert p.returncode == 2 and "minimum supported version" in p.stderr


def test_draft_model_prefixes(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    draft = shared_dir / "fixtures" / "hf" / "tiny-llama"
    p = convert(stquant, src, tmp_path, "d", "-q", "int4", "--draft", str(draft), "--draft-quantize", "mxfp8")
    manifest = json.loads(manifest_path(tmp_path, "d").read_text())
    names = [l.get("name", "") for l in manifest["layers"]]
    assert "draft/config.json" in names
    draft_tensors = [l for l in manifest["layers"] if l["mediaType"] == TENSOR and l["name"].startswith("draft.")]
    assert draft_tensors
    data = blob(tmp_path, draft_tensors[0]["digest"]).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert all(k.startswith("draft.") for k in header if k != "__metadata__")
    config = json.loads(blob(tmp_path, manifest["config"]["digest"]).read_text())
    assert config["draft"] == {"model_format": "safetensors", "architecture": "LlamaForCausalLM",
                               "tensor_prefix": "draft.", "config": "draft/config.json"}
    p = convert(stquant, src, tmp_path, "e", "--draft-quantize", "int4", check=False)
    assert p.returncode == 2 and "--draft-quantize requires a DRAFT model" in p.stderr


def test_cli_errors(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    p = convert(stquant, src, tmp_path, "m", "-q", "int3", check=False)
    assert p.returncode == 2 and "supported types are int4, int8, nvfp4, mxfp4, mxfp8" in p.stderr
    p = convert(stquant, src, tmp_path, "bad name!", check=False)
    assert p.returncode == 2 and "invalid model name: bad name!" in p.stderr
    p = convert(stquant, tmp_path, tmp_path, "m", check=False)
    assert p.returncode == 2 and "is not a supported safetensors model directory" in p.stderr
    assert not (tmp_path / "manifests").exists() or not any((tmp_path / "manifests").rglob("latest"))


def test_inspect_by_name(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    convert(stquant, src, tmp_path, "me/m:v1", "-q", "nvfp4")
    p = subprocess.run([str(stquant), "inspect", "--models-dir", str(tmp_path), "me/m:v1", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    manifest = json.loads((tmp_path / "manifests/registry.ollama.ai/me/m/v1").read_text())
    assert [l["digest"] for l in report["layers"]] == [l["digest"] for l in manifest["layers"]]
    assert report["config"]["file_type"] == "nvfp4"
    q = {t["name"]: t.get("quant_type") for l in report["layers"] for t in l.get("tensors", [])}
    assert q["model.layers.0.self_attn.q_proj.weight"] == "nvfp4"
    assert q["model.layers.0.self_attn.v_proj.weight"] == "mxfp8"
    assert q["model.norm.weight"] is None
    text = subprocess.run([str(stquant), "inspect", "--models-dir", str(tmp_path), "me/m:v1"],
                          capture_output=True, text=True).stdout
    assert "model.layers.0.self_attn.q_proj.weight.scale" in text and "nvfp4 g16" in text
    p = subprocess.run([str(stquant), "inspect", "--models-dir", str(tmp_path), "absent"], capture_output=True, text=True)
    assert p.returncode == 2 and "not found" in p.stderr
