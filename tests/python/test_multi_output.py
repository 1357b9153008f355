"""Several outputs from one conversion (issue 16 item 2): `-q int4,nvfp4 -o 'out-{q}'` writes one
directory per type, each byte-identical to its own run (the read-once property is tested on
WriteRows in tests/output/tensor_stream_test.cc; bench/convert --multi shows the bytes read)."""
import filecmp
import json
import subprocess
from pathlib import Path

import pytest


def run(stquant, *args):
    return subprocess.run([str(stquant), *map(str, args)], capture_output=True, text=True)


def same_tree(a: Path, b: Path) -> bool:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    return names_a == names_b and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names_a if (a / n).is_file())


@pytest.mark.parametrize("fixture", ["tiny-llama", "tiny-qwen3-moe", "tiny-qwen3-fp8"])
def test_each_output_equals_its_own_run(stquant, shared_dir, tmp_path, fixture):
    src = shared_dir / "fixtures" / "hf" / fixture
    types = ["int4", "nvfp4", "mxfp8", "int8"]
    p = run(stquant, "convert", src, "-q", ",".join(types), "-o", tmp_path / "multi-{q}", "--quiet")
    assert p.returncode == 0, p.stderr
    for q in types:
        p = run(stquant, "convert", src, "-q", q, "-o", tmp_path / f"single-{q}", "--quiet")
        assert p.returncode == 0, p.stderr
        assert same_tree(tmp_path / f"multi-{q}", tmp_path / f"single-{q}"), (fixture, q)


def test_refusals_create_nothing(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-llama"
    p = run(stquant, "convert", src, "-q", "int4,nvfp4", "-o", tmp_path / "out")
    assert p.returncode == 2 and "{q} placeholder" in p.stderr
    p = run(stquant, "convert", src, "-q", "int4,nvfp4", "-o", tmp_path / "out-{q}", "--report", tmp_path / "r.json")
    assert p.returncode == 2 and "--report" in p.stderr
    # One output exists already: refused before anything is written, the other not created.
    (tmp_path / "out-nvfp4").mkdir()
    p = run(stquant, "convert", src, "-q", "int4,nvfp4", "-o", tmp_path / "out-{q}")
    assert p.returncode == 2 and "out-nvfp4" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out-nvfp4"]
    p = run(stquant, "convert", src, "-q", "int4,,nvfp4", "-o", tmp_path / "x-{q}")
    assert p.returncode == 2 and "empty type" in p.stderr


def test_reports_and_ollama_names_per_type(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3"
    p = run(stquant, "convert", src, "-q", "int4,mxfp8", "-o", tmp_path / "m-{q}", "--report", tmp_path / "r-{q}.json",
            "--quiet")
    assert p.returncode == 0, p.stderr
    for q in ("int4", "mxfp8"):
        report = json.loads((tmp_path / f"r-{q}.json").read_text())
        assert {t["type"] for t in report["tensors"]} == {q}
    store = tmp_path / "store"
    p = run(stquant, "convert", src, "--layout", "ollama", "--name", "m:{q}", "--models-dir", store, "-q", "int4,mxfp8",
            "--quiet")
    assert p.returncode == 0, p.stderr
    for q in ("int4", "mxfp8"):
        alone = tmp_path / f"store-{q}"
        p = run(stquant, "convert", src, "--layout", "ollama", "--name", f"m:{q}", "--models-dir", alone, "-q", q,
                "--quiet")
        assert p.returncode == 0, p.stderr
        manifest = Path("manifests/registry.ollama.ai/library/m") / q
        assert (store / manifest).read_bytes() == (alone / manifest).read_bytes(), q
