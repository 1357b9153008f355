"""Issue 17: hostile files around the weights, end to end through the real `stquant` binary.

test_malformed.py breaks the contents of safetensors files and JSON; this file breaks the files
themselves: FIFOs (whose open blocks until a writer appears), symbolic link loops and dangling
links, devices and directories where a file is expected, JSON nested 20,000 to 200,000 levels
deep, and configs of hundreds of megabytes. Each row starts from a copy of a real fixture
(tiny-llama, or tiny-qwen3-moe for an indexed model), breaks one file, and runs every command that
reads it: `convert` (mlx layout), `convert --layout ollama`, `inspect` (and `quantize` /
`dequantize`, `convert -f Modelfile`, `inspect --models-dir` where those read the file).

The contract checked for each run, as in test_malformed.py: the exit code (2 for bad input),
exactly one line "stquant: error: <message>" naming the file and the reason, nothing written (no
output directory, no manifest), an elapsed time under 1 s and a peak RSS under 100 MiB (a hang is
killed after 30 s and fails the test).

The peak RSS is measured by a small Python process that fork()s and execs stquant and reads
os.wait4's ru_maxrss: a child that pytest starts itself (vfork) inherits the high-water mark of
pytest's own memory, which is not stquant's (and a child forked from pytest starts at pytest's
current RSS, over 100 MiB once numpy and mlx are imported by other test files). It is counted
above the binary's own floor, the peak RSS of `stquant --help` (6 MiB for a Release build, about
105 MiB under AddressSanitizer, whose shadow memory and allocator come first), so that the same
bounds hold for `STQUANT_BUILD_DIR=build-asan`.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

MAX_SECONDS = 1.0  # a refusal; a conversion that succeeds (an unaffected command, a keep case) gets:
CONVERSION_SECONDS = 20.0
MAX_RSS = 100 << 20
KILL_AFTER = 30

CONVERT = "convert"
OLLAMA = "ollama"
INSPECT = "inspect"
ALL = (CONVERT, OLLAMA, INSPECT)


def command(which: str, model: Path, tmp: Path) -> list:
    if which == CONVERT:
        return ["convert", model, "-o", tmp / "out" / "model", "-q", "int4"]
    if which == OLLAMA:
        return ["convert", model, "--layout", "ollama", "--name", "x", "--models-dir", tmp / "store", "-q", "int4"]
    return ["inspect", model]


@dataclass
class Run:
    rc: int
    stderr: str
    seconds: float
    rss: int


# argv: result file, kill-after seconds, the command. Writes "<exit code> <peak RSS KiB> <seconds>".
MEASURE = r"""
import os, signal, sys, time
result, kill_after, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
start = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(kill_after)
_, status, usage = os.wait4(pid, 0)
seconds = time.monotonic() - start
with open(result, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {seconds}")
"""


def measure(stquant: Path, args: list, cwd: Path, kill_after: int) -> tuple[int, str, float, int]:
    """Runs stquant (see MEASURE): exit code, stderr, wall time and peak RSS in bytes."""
    err, result = cwd / "stderr.txt", cwd / "measured.txt"
    with open(err, "wb") as stderr:
        subprocess.run([sys.executable, "-c", MEASURE, str(result), str(kill_after), str(stquant), *map(str, args)],
                       stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd, check=True)
    rc, rss_kib, seconds = result.read_text().split()
    return int(rc), err.read_text(errors="backslashreplace"), float(seconds), int(rss_kib) * 1024


_FLOOR: dict = {}


def rss_floor(stquant: Path, cwd: Path) -> int:
    """Peak RSS of `stquant --help`: what the binary takes before it reads anything."""
    if stquant not in _FLOOR:
        _FLOOR[stquant] = min(measure(stquant, ["--help"], cwd, KILL_AFTER)[3] for _ in range(3))
    return _FLOOR[stquant]


def run_measured(stquant: Path, args: list, cwd: Path, kill_after: int = KILL_AFTER) -> Run:
    """Runs stquant; its exit code, stderr, wall time and peak RSS above rss_floor."""
    rc, stderr, seconds, rss = measure(stquant, args, cwd, kill_after)
    return Run(rc, stderr, seconds, max(0, rss - rss_floor(stquant, cwd)))


def check(run: Run, rc: int, expect: list, what: str, max_seconds: float | None = None) -> None:
    assert run.rc == rc, f"{what}: exit {run.rc} (want {rc}), stderr {run.stderr!r}"
    max_seconds = max_seconds or (MAX_SECONDS if rc else CONVERSION_SECONDS)
    assert run.seconds < max_seconds, f"{what}: took {run.seconds:.2f} s"
    assert run.rss < MAX_RSS, f"{what}: peak RSS {run.rss >> 20} MiB"
    if rc == 0:
        return
    assert run.stderr.startswith("stquant: error: ") and run.stderr.count("\n") == 1, f"{what}: {run.stderr!r}"
    for want in expect:
        assert want in run.stderr, f"{what}: {want!r} not in {run.stderr!r}"
    assert "internal error" not in run.stderr


def written(tmp: Path) -> list[str]:
    """What a failed run must not leave: the mlx output (or its temporaries) and any manifest."""
    left = [str(p.relative_to(tmp)) for p in (tmp / "out").iterdir()] if (tmp / "out").exists() else []
    manifests = tmp / "store" / "manifests"
    if manifests.exists():
        left += [str(p.relative_to(tmp)) for p in manifests.rglob("*") if p.is_file()]
    return left


# ---- breaking a copy of a fixture ---------------------------------------------------------------


def nested(levels: int, open_: str, close: str) -> str:
    return open_ * levels + "1" + close * levels


def replace_with_fifo(name: str) -> Callable[[Path], None]:
    def make(m: Path) -> None:
        (m / name).unlink(missing_ok=True)
        os.mkfifo(m / name)
    return make


def replace_with_symlink(name: str, target: str) -> Callable[[Path], None]:
    def make(m: Path) -> None:
        (m / name).unlink(missing_ok=True)
        (m / name).symlink_to(target)
    return make


def replace_with_directory(name: str) -> Callable[[Path], None]:
    def make(m: Path) -> None:
        (m / name).unlink()
        (m / name).mkdir()
    return make


def replace_with_text(name: str, text: Callable[[], str]) -> Callable[[Path], None]:
    def make(m: Path) -> None:
        (m / name).write_text(text())
    return make


def replace_with_padded(name: str, head: str, padding: int, tail: str) -> Callable[[Path], None]:
    """head + `padding` spaces + tail, written in pieces (pytest's own memory stays small)."""
    def make(m: Path) -> None:
        with open(m / name, "w") as f:
            f.write(head)
            for _ in range(padding // (1 << 20)):
                f.write(" " * (1 << 20))
            f.write(" " * (padding % (1 << 20)) + tail)
    return make


def replace_with_sparse(name: str, size: int, head: bytes = b"") -> Callable[[Path], None]:
    """A file of `size` bytes that takes no disk blocks (a size check must refuse it unread)."""
    def make(m: Path) -> None:
        with open(m / name, "wb") as f:
            f.write(head)
            f.truncate(size)
    return make


def replace_with_socket(name: str) -> Callable[[Path], None]:
    def make(m: Path) -> None:
        (m / name).unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(m / name))
        s.close()  # the socket file stays
    return make


LLAMA = "tiny-llama"
MOE = "tiny-qwen3-moe"  # 7 shards and an index


@dataclass
class Row:
    name: str
    fixture: str
    make: Callable[[Path], None]
    expect: list  # substrings of the one-line message (each command)
    rc: int = 2
    commands: tuple = ALL
    # Commands that do not read the broken file: they must still succeed.
    unaffected: tuple = ()


ROWS = [
    # -- the table of issue 17, each with its own sizes and depths
    Row("config-100000-level-arrays", LLAMA,
        replace_with_text("config.json", lambda: '{"a": ' + nested(100_000, "[", "]") + ', "model_type": "llama"}'),
        ["config.json': invalid JSON: nested deeper than 64 levels"]),
    Row("config-20000-level-arrays", LLAMA,
        replace_with_text("config.json", lambda: '{"a": ' + nested(20_000, "[", "]") + ', "model_type": "llama"}'),
        ["config.json': invalid JSON: nested deeper than 64 levels"]),
    Row("config-60000-level-objects", LLAMA,
        replace_with_text("config.json", lambda: '{"model_type": "llama", "x": ' + nested(60_000, '{"y":', "}") + "}"),
        ["config.json': invalid JSON: nested deeper than 64 levels"]),
    Row("shard-fifo-indexed", MOE, replace_with_fifo("model-00003-of-00007.safetensors"),
        ["model-00003-of-00007.safetensors': not a regular file (a FIFO)"]),
    Row("shard-fifo", LLAMA, replace_with_fifo("model.safetensors"),
        ["model.safetensors': not a regular file (a FIFO)"]),
    Row("tokenizer-json-fifo", LLAMA, replace_with_fifo("tokenizer.json"),
        ["tokenizer.json': not a regular file (a FIFO), and the converted model needs this file"],
        commands=(CONVERT, OLLAMA), unaffected=(INSPECT,)),
    Row("generation-config-fifo", LLAMA, replace_with_fifo("generation_config.json"),
        ["generation_config.json': not a regular file (a FIFO), and the converted model needs this file"],
        commands=(CONVERT, OLLAMA), unaffected=(INSPECT,)),
    Row("config-fifo", LLAMA, replace_with_fifo("config.json"), ["config.json': not a regular file (a FIFO)"]),
    Row("shard-symlink-to-itself-indexed", MOE,
        replace_with_symlink("model-00002-of-00007.safetensors", "model-00002-of-00007.safetensors"),
        ["model-00002-of-00007.safetensors': symbolic link loop"]),
    Row("shard-symlink-to-itself", LLAMA, replace_with_symlink("model.safetensors", "model.safetensors"),
        ["model.safetensors': symbolic link loop"]),
    Row("config-200MB-whitespace", LLAMA,
        replace_with_padded("config.json", '{"model_type": "llama"', 200_000_000, "}"),
        ["config.json': 200000023 bytes, over the limit of 4 MiB for a JSON configuration file"]),
    Row("shard-symlink-to-dev-zero", LLAMA, replace_with_symlink("model.safetensors", "/dev/zero"),
        ["model.safetensors': not a regular file (a character device)"]),
    Row("directory-named-like-a-shard-indexed", MOE, replace_with_directory("model-00004-of-00007.safetensors"),
        ["model-00004-of-00007.safetensors': not a regular file (a directory)"]),
    Row("directory-named-like-a-shard", LLAMA, replace_with_directory("model.safetensors"),
        ["no *.safetensors files in"]),
    Row("index-200000-levels", MOE,
        replace_with_text("model.safetensors.index.json", lambda: '{"a": ' + nested(200_000, "[", "]") + "}"),
        ["model.safetensors.index.json': invalid JSON: nested deeper than 64 levels"]),
    # -- the same classes on the other files stquant reads
    Row("index-fifo", MOE, replace_with_fifo("model.safetensors.index.json"),
        ["model.safetensors.index.json': not a regular file (a FIFO)"]),
    Row("index-over-32MiB", MOE, replace_with_sparse("model.safetensors.index.json", (32 << 20) + 1, b"{}"),
        ["model.safetensors.index.json': 33554433 bytes, over the limit of 32 MiB for a safetensors index"]),
    Row("hf-quant-config-fifo", LLAMA, replace_with_fifo("hf_quant_config.json"),
        ["hf_quant_config.json': not a regular file (a FIFO)"]),
    Row("hf-quant-config-deep", LLAMA,
        replace_with_text("hf_quant_config.json", lambda: nested(1000, "[", "]")),
        ["hf_quant_config.json': invalid JSON: nested deeper than 64 levels"]),
    Row("tokenizer-config-fifo", LLAMA, replace_with_fifo("tokenizer_config.json"),
        ["tokenizer_config.json': not a regular file (a FIFO), and the converted model needs this file"],
        commands=(CONVERT, OLLAMA), unaffected=(INSPECT,)),
    Row("chat-template-socket", LLAMA, replace_with_socket("chat_template.jinja"),
        ["chat_template.jinja': not a regular file (a socket), and the converted model needs this file"],
        commands=(CONVERT, OLLAMA), unaffected=(INSPECT,)),
    Row("tokenizer-dangling-symlink", LLAMA, replace_with_symlink("tokenizer.json", "../../blobs/missing"),
        ["tokenizer.json': dangling symbolic link (its target '../../blobs/missing' does not exist)"],
        commands=(CONVERT, OLLAMA), unaffected=(INSPECT,)),
    Row("shard-dangling-symlink-indexed", MOE,
        replace_with_symlink("model-00001-of-00007.safetensors", "../../blobs/missing"),
        ["model-00001-of-00007.safetensors': dangling symbolic link"]),
    Row("config-symlink-loop", LLAMA, replace_with_symlink("config.json", "config.json"),
        ["config.json': symbolic link loop"]),
]


@pytest.fixture
def fixtures(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "hf"


def copy_fixture(fixtures: Path, name: str, tmp: Path) -> Path:
    model = tmp / "m"
    shutil.copytree(fixtures / name, model)
    for p in [model, *model.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return model


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_hostile_file(stquant, fixtures, tmp_path, row):
    model = copy_fixture(fixtures, row.fixture, tmp_path)
    row.make(model)
    (tmp_path / "out").mkdir()
    for which in row.commands:
        run = run_measured(stquant, command(which, model, tmp_path), tmp_path)
        check(run, row.rc, row.expect, which)
        if row.rc != 0:
            assert written(tmp_path) == [], which
    for which in row.unaffected:
        check(run_measured(stquant, command(which, model, tmp_path), tmp_path), 0, [], which)


# ---- the densest JSON within the size limits: the value budget bounds its parsed form -------------


def dense_json(path: Path, limit: int, head: str, item: Callable[[int], str], tail: str) -> None:
    """head + item(0) + item(1) + ... + tail, as many items as `limit` bytes hold, written in pieces."""
    with open(path, "w") as f:
        f.write(head)
        size, i, piece = len(head) + len(tail), 0, []
        while size + len(item(i)) <= limit:
            piece.append(item(i))
            size, i = size + len(piece[-1]), i + 1
            if len(piece) == 1 << 16:
                f.write("".join(piece))
                piece = []
        f.write("".join(piece) + tail)


# (file, size limit, text, the budget's message, peak RSS bound measured with README's numbers)
DENSE = [
    ("config.json", 4 << 20, ('{"model_type": "llama", "a": [', lambda i: "0,", "0]}"),
     "config.json': JSON of more than 262144 values, over the limit for a JSON configuration file", 100 << 20),
    ("config.json", 4 << 20, ('{"model_type": "llama", "o": {', lambda i: f'"{i:x}":0,', '"z":0}}'),
     "config.json': JSON of more than 262144 values", 100 << 20),
    ("model.safetensors.index.json", 32 << 20,
     ('{"weight_map": {', lambda i: f'"{i:x}":"a.safetensors",', '"z":"a.safetensors"}}'),
     "model.safetensors.index.json': JSON of more than 1048576 values, over the limit for a safetensors index",
     160 << 20),
]


@pytest.mark.parametrize("case", DENSE, ids=["config-array", "config-object", "index-weight-map"])
def test_densest_json_at_the_size_limit(stquant, fixtures, tmp_path, case):
    file, limit, (head, item, tail), message, max_rss = case
    model = copy_fixture(fixtures, MOE, tmp_path)
    dense_json(model / file, limit, head, item, tail)
    assert (model / file).stat().st_size <= limit
    run = run_measured(stquant, command(INSPECT, model, tmp_path), tmp_path, kill_after=300)
    assert run.rc == 2 and message in run.stderr, run.stderr
    assert run.rss < max_rss, f"peak RSS {run.rss >> 20} MiB"


# ---- what must keep working ---------------------------------------------------------------------


def test_hf_cache_layout_of_symlinks_still_converts(stquant, fixtures, tmp_path):
    """snapshots/<rev>/<file> -> ../../blobs/<hash>, every file (shards, config, tokenizer)."""
    blobs = tmp_path / "cache" / "blobs"
    snapshot = tmp_path / "cache" / "snapshots" / "rev1"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, src in enumerate(sorted((fixtures / MOE).iterdir())):
        shutil.copyfile(src, blobs / f"{i:04x}")
        (snapshot / src.name).symlink_to(f"../../blobs/{i:04x}")
    (tmp_path / "out").mkdir()
    for which in ALL:
        check(run_measured(stquant, command(which, snapshot, tmp_path), tmp_path), 0, [], which)
    out = tmp_path / "out" / "model"
    assert (out / "tokenizer.json").read_bytes() == (fixtures / MOE / "tokenizer.json").read_bytes()
    assert not (out / "tokenizer.json").is_symlink()


def test_unneeded_special_file_is_left_out_with_a_warning(stquant, fixtures, tmp_path):
    model = copy_fixture(fixtures, LLAMA, tmp_path)
    os.mkfifo(model / "README.md")
    (model / "docs").mkdir()  # directories are not copied either, silently
    (tmp_path / "out").mkdir()
    run = run_measured(stquant, command(CONVERT, model, tmp_path), tmp_path)
    check(run, 0, [], CONVERT)
    out = tmp_path / "out" / "model"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "model.safetensors.index.json", "tokenizer.json",
                                                     "tokenizer_config.json"]
    dry = subprocess.run([str(stquant), "convert", str(model), "-o", str(tmp_path / "dry"), "--dry-run"],
                         capture_output=True, text=True, timeout=KILL_AFTER)
    assert dry.returncode == 0, dry.stderr
    assert "README.md': not a regular file (a FIFO) (left out of the output)" in dry.stdout + dry.stderr


@pytest.mark.parametrize("which", [CONVERT, OLLAMA])
def test_large_tokenizer_is_streamed(stquant, fixtures, tmp_path, which):
    """A copied file larger than any read limit (tokenizer.json of real models is tens of MB) is
    copied in pieces: 200 MiB through a process that stays under 100 MiB."""
    model = copy_fixture(fixtures, LLAMA, tmp_path)
    replace_with_sparse("tokenizer.json", 200 << 20, b'{"model": {}}')(model)
    (tmp_path / "out").mkdir()
    check(run_measured(stquant, command(which, model, tmp_path), tmp_path, kill_after=120), 0, [], which,
          max_seconds=120)


# ---- the other commands that read files ---------------------------------------------------------


def deep_header_file(path: Path, levels: int) -> Path:
    """A safetensors file whose header is {"a": [[[...]]]}, `levels` deep, written in pieces."""
    piece = 1 << 20
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 6 + 2 * levels) + b'{"a":')
        for bracket in (b"[", b"]"):
            for _ in range(levels // piece):
                f.write(bracket * piece)
            f.write(bracket * (levels % piece))
        f.write(b"}")
    return path


@pytest.mark.parametrize("cmd", ["quantize", "dequantize", "inspect"])
def test_safetensors_input_that_is_a_fifo_or_deep(stquant, tmp_path, cmd):
    def args(src: Path) -> list:
        out = ["-o", tmp_path / "out" / "o.safetensors"]
        return {"quantize": ["quantize", src, *out, "-q", "int4"], "dequantize": ["dequantize", src, *out],
                "inspect": ["inspect", src]}[cmd]
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "in.safetensors")
    check(run_measured(stquant, args(tmp_path / "in.safetensors"), tmp_path), 2,
          ["in.safetensors': not a regular file (a FIFO)"], cmd)
    (tmp_path / "loop.safetensors").symlink_to("loop.safetensors")
    check(run_measured(stquant, args(tmp_path / "loop.safetensors"), tmp_path), 2,
          ["loop.safetensors': symbolic link loop"], cmd)
    # 5 million levels (10 MB of header): refused at level 65, not after a gigabyte of DOM.
    deep = deep_header_file(tmp_path / "deep.safetensors", 5_000_000)
    check(run_measured(stquant, args(deep), tmp_path), 2, ["deep.safetensors: header JSON is nested deeper than 64"],
          cmd)
    assert written(tmp_path) == []


def test_modelfile_that_is_a_fifo_or_too_large(stquant, fixtures, tmp_path):
    model = copy_fixture(fixtures, LLAMA, tmp_path)
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "Modelfile")
    base = ["convert", "--layout", "ollama", "--name", "x", "--models-dir", tmp_path / "store", "-f"]
    check(run_measured(stquant, [*base, tmp_path / "Modelfile"], tmp_path), 2,
          ["Modelfile': not a regular file (a FIFO)"], "fifo")
    replace_with_sparse("Big", (4 << 20) + 1, f"FROM {model}\n".encode())(tmp_path)
    check(run_measured(stquant, [*base, tmp_path / "Big"], tmp_path), 2,
          ["Big': 4194305 bytes, over the limit of 4 MiB for a Modelfile or chat template"], "big")
    (tmp_path / "Invalid").write_bytes(f"FROM {model}\nPARAMETER stop \xff\n".encode("latin-1"))
    check(run_measured(stquant, [*base, tmp_path / "Invalid"], tmp_path), 2, ["Modelfile", "not valid UTF-8"],
          "utf8")
    assert written(tmp_path) == []


def test_inspect_models_dir_hostile_manifest_and_config_blob(stquant, fixtures, tmp_path):
    model = copy_fixture(fixtures, LLAMA, tmp_path)
    (tmp_path / "out").mkdir()
    check(run_measured(stquant, command(OLLAMA, model, tmp_path), tmp_path), 0, [], "import")
    store = tmp_path / "store"
    manifests = store / "manifests" / "registry.ollama.ai" / "library" / "x"
    manifest = json.loads((manifests / "latest").read_text())

    def inspect(tag: str) -> Run:
        return run_measured(stquant, ["inspect", "--models-dir", store, f"x:{tag}"], tmp_path)

    check(inspect("latest"), 0, [], "good")
    os.mkfifo(manifests / "fifo")
    check(inspect("fifo"), 2, ["manifests/registry.ollama.ai/library/x/fifo': not a regular file (a FIFO)"], "fifo")
    (manifests / "deep").write_text('{"layers": ' + nested(100_000, "[", "]") + "}")
    check(inspect("deep"), 2, ["x/deep': invalid JSON: nested deeper than 64 levels"], "deep")
    escape = dict(manifest, layers=[dict(manifest["layers"][0], digest="sha256:../../../../etc/passwd")])
    (manifests / "escape").write_text(json.dumps(escape))
    check(inspect("escape"), 2, ["x/escape': layer 0 has no digest \"sha256:<64 hex digits>\""], "escape")
    typed = dict(manifest, layers=[dict(manifest["layers"][0], size="12")])
    (manifests / "typed").write_text(json.dumps(typed))
    check(inspect("typed"), 2, ["x/typed': layer 0: \"size\" is not a non-negative integer"], "typed")
    config_blob = store / "blobs" / ("sha256-" + manifest["config"]["digest"].split(":")[1])
    config_blob.unlink()
    os.mkfifo(config_blob)
    check(inspect("latest"), 2, ["': not a regular file (a FIFO)"], "config blob fifo")
