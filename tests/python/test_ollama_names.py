"""ollama's words in the ollama layout (ollama-create-spec §1, §3, §9): -q takes every name and
alias `ollama create --quantize` takes, with ollama's meaning and its error text for others; a
Modelfile FROM may name a model of the store, whose layers are reused; --dry-run shows the blob of
every tensor and the manifest the import writes."""
import json
import subprocess
from pathlib import Path

import pytest

from test_ollama_store import blob, convert, manifest_path

SUPPORTED = "supported types are int4, int8, nvfp4, mxfp4, mxfp8"
# (names ollama accepts, the canonical type they mean)
ALIASES = [(["int4", "q4", "fp4", "Q4", " FP4 "], "int4"), (["int8", "q8", "fp8", "Int8"], "int8"),
           (["nvfp4", "NVFP4"], "nvfp4"), (["mxfp4"], "mxfp4"), (["mxfp8", "MXFP8"], "mxfp8")]


def layers(store, name):
    return json.loads(manifest_path(store, name).read_text())["layers"]


@pytest.mark.parametrize("names,canonical", ALIASES, ids=[c for _, c in ALIASES])
def test_every_alias_means_what_ollama_means(stquant, repo_root, tmp_path, names, canonical):
    src = repo_root / "examples" / "tiny-model"
    convert(stquant, src, tmp_path, "canonical", "-q", canonical)
    expected = layers(tmp_path, "canonical")
    config = json.loads(manifest_path(tmp_path, "canonical").read_text())["config"]
    assert json.loads(blob(tmp_path, config["digest"]).read_text())["file_type"] == canonical
    for i, name in enumerate(names):
        convert(stquant, src, tmp_path, f"alias{i}", "-q", name)
        assert layers(tmp_path, f"alias{i}") == expected, name


@pytest.mark.parametrize("name", ["q5", "int3", "fp16", "mxfp6", "q4_K_M", "int4 g32"])
def test_unknown_names_get_ollama_s_error(stquant, repo_root, tmp_path, name):
    p = convert(stquant, repo_root / "examples" / "tiny-model", tmp_path, "m", "-q", name, check=False)
    assert p.returncode == 2
    assert p.stderr == f'stquant: error: unsupported --quantize "{name}": {SUPPORTED}\n'
    p = convert(stquant, repo_root / "examples" / "tiny-model", tmp_path, "m", "--draft", str(repo_root / "examples/tiny-model"),
                "--draft-quantize", name, check=False)
    assert p.returncode == 2 and p.stderr == f'stquant: error: unsupported --draft-quantize "{name}": {SUPPORTED}\n'
    assert not (tmp_path / "manifests").exists() or not manifest_path(tmp_path, "m").exists()


@pytest.mark.parametrize("args", [["-q", "q4"], ["-q", "fp8"], []])
def test_dry_run_shows_blobs_and_the_manifest_written(stquant, shared_dir, tmp_path, args):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3-moe"
    p = convert(stquant, src, tmp_path, "m", "--dry-run", "--json", *args)
    plan = json.loads(p.stdout)
    assert not (tmp_path / "manifests").exists() or not manifest_path(tmp_path, "m").exists()
    assert all(t["blob"] for t in plan["tensors"])
    assert plan["manifest"]["path"] == str(manifest_path(tmp_path, "m"))
    convert(stquant, src, tmp_path, "m", *args)
    written = layers(tmp_path, "m")
    assert [(l["mediaType"], l["name"]) for l in plan["manifest"]["layers"]] == \
           [(l["mediaType"], l.get("name", "")) for l in written]
    # Each tensor lies in the blob the dry run named.
    for t in plan["tensors"]:
        layer = next(l for l in written if l.get("name") == t["blob"])
        data = blob(tmp_path, layer["digest"]).read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        assert t["name"] in header, (t["name"], t["blob"])
    text = convert(stquant, src, tmp_path, "m2", "--dry-run", *args).stdout
    assert "-> blob model.layers.1.mlp.experts" in text and f"manifest {manifest_path(tmp_path, 'm2')}" in text


def test_from_an_existing_model_reuses_its_layers(stquant, repo_root, shared_dir, tmp_path):
    convert(stquant, repo_root / "examples" / "tiny-model", tmp_path, "base", "-q", "int4")
    base = json.loads(manifest_path(tmp_path, "base").read_text())
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM base\nSYSTEM You are terse.\nPARAMETER temperature 0.2\n"
                         f"DRAFT {shared_dir / 'fixtures/hf/tiny-llama'}\n")
    run = ["convert", "--layout", "ollama", "--models-dir", str(tmp_path), "-f", str(modelfile)]
    plan = json.loads(subprocess.run([str(stquant), *run, "--name", "chat", "--dry-run", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    p = subprocess.run([str(stquant), *run, "--name", "chat"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    chat = json.loads(manifest_path(tmp_path, "chat").read_text())
    n = len(base["layers"])
    assert chat["layers"][:n] == base["layers"]  # the base's blobs, as they are
    added = chat["layers"][n:]
    assert [l["mediaType"] for l in added if not l.get("name", "").startswith("draft")] == \
           ["application/vnd.ollama.image.system", "application/vnd.ollama.image.params"]
    assert any(l.get("name") == "draft/config.json" for l in added)
    assert [(l["mediaType"], l["name"]) for l in plan["manifest"]["layers"]] == \
           [(l["mediaType"], l.get("name", "")) for l in chat["layers"]]
    config = json.loads(blob(tmp_path, chat["config"]["digest"]).read_text())
    base_config = json.loads(blob(tmp_path, base["config"]["digest"]).read_text())
    assert config.pop("draft")["tensor_prefix"] == "draft."
    assert config == base_config
    # Refusals: -q on a model of the store; a name that is neither a directory nor a model.
    p = subprocess.run([str(stquant), *run, "--name", "x", "-q", "int8"], capture_output=True, text=True)
    assert p.returncode == 2 and "names an existing model" in p.stderr
    modelfile.write_text("FROM nosuch\n")
    p = subprocess.run([str(stquant), *run, "--name", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "nor a model of the store" in p.stderr
