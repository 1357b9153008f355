"""The zoo comparison: mlx_lm.convert references (cached), stquant's outputs, their differences
by class, the ollama layout check, and the runner of `zoo.py check` (one child process per arch).
Fixtures, materializer and the transformers-4 config form are in zoo.py; the report in
zoo_report.py."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoo import (CACHE, DEFAULT_SUBSET, FP8_VARIANTS, N_TOKENS, PROMPT, REFERENCE_VERSION, REPO, TYPES, archs,
                 fixture_hash, materialize, mlx_lm_classes)


def mlx_lm_version() -> str:
    import mlx_lm

    return mlx_lm.__version__


def short_error(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def greedy_tokens(model_dir: Path, n: int = N_TOKENS) -> list[int]:
    """mlx_lm.load + n greedy tokens. Where the model does not run in its dtype on the CPU
    (MLX's CPU gather_mm, used by unquantized stacked experts, supports float32 only), its
    floating parameters are cast to float32 and it runs again."""
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model, tokenizer = load(str(model_dir))
        try:
            return [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=n)]
        except RuntimeError as e:
            if "only supports float32" not in str(e):
                raise
            model.set_dtype(mx.float32)
            return [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=n)]


def run_mlx_lm_convert(src: Path, dst: Path, type_name: str):
    from mlx_lm import convert

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert(str(src), str(dst), **TYPES[type_name][1])


def reference(arch: str, type_name: str, form: str = "v4") -> dict:
    """mlx_lm.convert of the arch's `form` directory with the type, cached: {"dir", "ok",
    "error", "stage", "tokens"}; stage is where it failed (convert / generate)."""
    src = materialize(arch, form)
    key = hashlib.sha256(json.dumps([arch, form, type_name, fixture_hash(arch), (src / "config.json").read_text(),
                                     mlx_lm_version(), REFERENCE_VERSION]).encode()).hexdigest()[:16]
    d = CACHE / "ref" / arch / f"{form}-{type_name}-{key}"
    result_file = d / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    result = {"dir": str(d / "out"), "ok": False, "error": None, "stage": "convert", "tokens": None}
    t0 = time.time()
    try:
        run_mlx_lm_convert(src, d / "out", type_name)
        result["stage"] = "generate"
        result["tokens"] = greedy_tokens(d / "out")
        result["ok"], result["stage"] = True, None
    except BaseException as e:  # noqa: B036 -- model modules may sys.exit on import
        if isinstance(e, KeyboardInterrupt):
            raise
        result["error"] = short_error(e)
    result["seconds"] = round(time.time() - t0, 2)
    result_file.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------
# stquant's output and the comparison.

def stquant_binary() -> Path:
    build = Path(os.environ.get("STQUANT_BUILD_DIR", REPO / "build"))
    return (build if build.is_absolute() else REPO / build) / "stquant"


def run_stquant(src: Path, out: Path, type_name: str, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([str(stquant_binary()), "convert", str(src), "-o", str(out), "--quiet", "--force",
                           *TYPES[type_name][0], *extra], capture_output=True, text=True)


def load_outputs(directory: Path) -> tuple[dict, dict]:
    """name -> (dtype, shape, raw bytes) over every shard, and config.json."""
    tensors = {}
    for shard in sorted(directory.glob("*.safetensors")):
        data = shard.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        for name, info in header.items():
            if name != "__metadata__":
                b, e = info["data_offsets"]
                tensors[name] = (info["dtype"], tuple(info["shape"]), data[8 + n + b:8 + n + e])
    return tensors, json.loads((directory / "config.json").read_text())


def normalize_quantization(q):
    """mlx-lm writes "group_size": null in per-layer entries when no group size is given (its
    loader then uses the default); stquant writes the group size it used."""
    if not isinstance(q, dict):
        return q
    out = {}
    for key, value in q.items():
        if isinstance(value, dict) and "group_size" in value and value["group_size"] is None:
            value = dict(value, group_size=q.get("group_size"))
        out[key] = value
    return out


QUANT_SUFFIXES = (".scales", ".biases", ".global_scale")


def pattern(name: str) -> str:
    """A tensor name with its layer / expert indices as N, to group differences."""
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def group_names(names) -> list[str]:
    counts = {}
    for n in sorted(names):
        counts[pattern(n)] = counts.get(pattern(n), 0) + 1
    return [f"{p} (x{c})" if c > 1 else p for p, c in counts.items()]


def compare_dirs(ours: Path, theirs: Path) -> list[dict]:
    """The differences of two mlx-lm model directories, each {"class", "detail", "names"}:
      names      tensors in one output only (quantization companions listed with their weight)
      quantized  a module quantized in one output and kept in the other
      qparams    a module quantized in both with another mode or bits (companions or shapes differ)
      dtype, shape, bytes   of the other tensors both have
      config     the quantization blocks (quantization_config only where it is not a copy)
      args       mlx-lm's ModelArgs built from each config.json (what the model is made of)"""
    a, ca = load_outputs(ours)
    b, cb = load_outputs(theirs)
    diffs = []

    def companions(t, m):
        return tuple(s for s in QUANT_SUFFIXES if m + s in t)

    modules = {n[:-len(".weight")] for n in a if n.endswith(".weight") and n in b}
    q_a, q_b, q_params = [], [], []
    for m in sorted(modules):
        sa, sb = companions(a, m), companions(b, m)
        if ".scales" in sa and ".scales" not in sb:
            q_a.append(m)
        elif ".scales" in sb and ".scales" not in sa:
            q_b.append(m)
        elif sa and (sa != sb or any(a[m + x][:2] != b[m + x][:2] for x in sa + (".weight",))):
            q_params.append((m, f"stquant {describe_quantized(ca, m)} vs mlx-lm {describe_quantized(cb, m)}"))
    for items, detail in ((q_a, "stquant quantizes, mlx-lm keeps"), (q_b, "mlx-lm quantizes, stquant keeps")):
        if items:
            diffs.append({"class": "quantized", "detail": detail, "names": group_names(m + ".weight" for m in items)})
    if q_params:
        diffs.append({"class": "qparams", "detail": "quantized in both, another mode or bits",
                      "names": group_pairs(q_params)})
    handled = {m + x for m in q_a + q_b + [m for m, _ in q_params] for x in QUANT_SUFFIXES + (".weight",)}
    only_a, only_b = set(a) - set(b) - handled, set(b) - set(a) - handled
    # A weight in one output only: its quantization companions are listed with it, not apart.
    only_a = {n for n in only_a if not (n.endswith(QUANT_SUFFIXES) and n.rsplit(".", 1)[0] + ".weight" in only_a)}
    only_b = {n for n in only_b if not (n.endswith(QUANT_SUFFIXES) and n.rsplit(".", 1)[0] + ".weight" in only_b)}
    if only_a:
        diffs.append({"class": "names", "detail": "only in stquant's output", "names": group_names(only_a)})
    if only_b:
        diffs.append({"class": "names", "detail": "only in mlx-lm's output", "names": group_names(only_b)})
    by_class = {"dtype": [], "shape": [], "bytes": []}
    for n in sorted(set(a) & set(b) - handled):
        (da, sa, xa), (db, sb, xb) = a[n], b[n]
        if da != db:
            by_class["dtype"].append(f"{n}: {da} vs {db}")
        elif sa != sb:
            by_class["shape"].append(f"{n}: {list(sa)} vs {list(sb)}")
        elif xa != xb:
            by_class["bytes"].append(n)
    for cls, items in by_class.items():
        if items:
            names = group_names(items) if cls == "bytes" else items
            detail = {"dtype": "dtype differs (stquant vs mlx-lm)", "shape": "shape differs (stquant vs mlx-lm)",
                      "bytes": "same dtype and shape, bytes differ"}[cls]
            diffs.append({"class": cls, "detail": detail, "names": names})
    qa, qb = normalize_quantization(ca.get("quantization")), normalize_quantization(cb.get("quantization"))
    if qa != qb:
        diffs.append({"class": "config", "detail": "quantization differs", "names": config_diff(qa, qb)})
    qca, qcb = normalize_quantization(ca.get("quantization_config")), normalize_quantization(cb.get("quantization_config"))
    if qca != qcb and (qca != qa or qcb != qb):
        diffs.append({"class": "config", "detail": "quantization_config differs", "names": config_diff(qca, qcb)})
    ma, mb = model_args(ca), model_args(cb)
    # head_dim null means hidden_size // num_attention_heads to every mlx-lm model.
    for x, y in ((ma, mb), (mb, ma)):
        if x.get("head_dim") is None and y.get("head_dim") and y.get("num_attention_heads") and \
                y["head_dim"] == (y.get("hidden_size") or 0) // y["num_attention_heads"]:
            x["head_dim"] = y["head_dim"]
    args = config_diff(ma, mb)
    if args:
        diffs.append({"class": "args", "detail": "mlx-lm's ModelArgs of the two config.json differ", "names": args})
    return diffs


def describe_quantized(config: dict, m: str) -> str:
    """A module's quantization as its config.json records it: the per-layer entry, else the global."""
    q = config.get("quantization") or {}
    e = q.get(m) if isinstance(q.get(m), dict) else q
    return f"{e.get('mode', 'affine')} {e.get('bits')}-bit g{e.get('group_size') or q.get('group_size')}"


def group_pairs(pairs) -> list[str]:
    """(name, text) pairs as "pattern (xK): text", one line per pattern and text."""
    counts = {}
    for name, text in pairs:
        key = (pattern(name), text)
        counts[key] = counts.get(key, 0) + 1
    return [f"{p}{f' (x{c})' if c > 1 else ''}: {t}" for (p, t), c in counts.items()]


def model_args(config: dict):
    """mlx-lm's ModelArgs of a config.json as a dict (after its __post_init__), or the error."""
    import dataclasses

    try:
        _, args_class = mlx_lm_classes(config.get("model_type", ""), config.get("architectures"))
        args = args_class.from_dict(config)
    except BaseException as e:  # noqa: B036
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"(error)": short_error(e)}
    out = {}
    for f in dataclasses.fields(args):
        v = getattr(args, f.name)
        if dataclasses.is_dataclass(v):
            v = dataclasses.asdict(v)
        out[f.name] = json.loads(json.dumps(v, default=str))
    return out


def config_diff(a, b) -> list[str]:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return [f"stquant {json.dumps(a)} vs mlx-lm {json.dumps(b)}"]
    if "(error)" in a or "(error)" in b:  # ModelArgs could not be built from one of them
        return [f"{who}: {x['(error)']}" for who, x in (("stquant", a), ("mlx-lm", b)) if "(error)" in x]
    return group_pairs((k, f"stquant {json.dumps(a.get(k))} vs mlx-lm {json.dumps(b.get(k))}")
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def check(arch: str, type_name: str, variant: str = "", keep: Path | None = None) -> dict:
    """One arch x type: stquant convert of the v5 form (variant "fp8": the block-FP8 form) against
    the reference. Result: {"arch", "type", "variant", "reference" (see reference()), "stquant":
    "ok" | "refused" | "failed", "stquant_error", "diffs", "tokens" (stquant's output's),
    "load_error", "verdict"}. keep: a directory where stquant's output stays (else removed)."""
    if variant == "fp8":
        base, ref_form = FP8_VARIANTS[arch]
        src = materialize(base, "fp8")
    else:
        base, ref_form = arch, "v4"
        src = materialize(arch, "v5")
    ref = reference(base, type_name, ref_form)
    r = {"arch": arch, "type": type_name, "variant": variant, "reference": ref, "stquant": None,
         "stquant_error": None, "diffs": [], "tokens": None, "verdict": None}
    work = Path(tempfile.mkdtemp(prefix=f"zoo-{arch}-{type_name}-"))
    out = (keep or work) / f"stquant-{arch}{'-' + variant if variant else ''}-{type_name}"
    try:
        t0 = time.time()
        proc = run_stquant(src, out, type_name)
        r["stquant_seconds"] = round(time.time() - t0, 2)
        if proc.returncode != 0:
            r["stquant"] = "refused" if proc.returncode == 2 else "failed"
            r["stquant_error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
            r["verdict"] = "stquant refused" if r["stquant"] == "refused" else "stquant failed"
            return r
        r["stquant"] = "ok"
        if ref["ok"] or ref["stage"] == "generate":
            r["diffs"] = compare_dirs(out, Path(ref["dir"]))
        try:
            r["tokens"] = greedy_tokens(out)
        except BaseException as e:  # noqa: B036
            if isinstance(e, KeyboardInterrupt):
                raise
            r["load_error"] = short_error(e)
        if not ref["ok"] and ref["stage"] == "convert":
            r["verdict"] = "reference failed; stquant output " + (
                "loads and generates" if r["tokens"] is not None else "does not load: " + r["load_error"])
        elif not ref["ok"]:
            r["verdict"] = "reference does not generate; " + ("identical" if not r["diffs"] else "differs")
        elif r["tokens"] is None:
            r["diffs"].append({"class": "load", "detail": "stquant's output does not load in mlx-lm",
                               "names": [r["load_error"]]})
            r["verdict"] = "differs"
        else:
            if r["tokens"] != ref["tokens"]:
                r["diffs"].append({"class": "tokens", "detail": "greedy tokens differ",
                                   "names": [f"stquant {r['tokens']} vs mlx-lm {ref['tokens']}"]})
            r["verdict"] = "differs" if r["diffs"] else "identical"
        return r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def acceptable(r: dict) -> bool:
    """What the issue asks of each check: stquant refuses (exit 2), or its output is identical to
    the reference with equal tokens; where mlx_lm.convert fails, stquant's output loads and
    generates; where the reference converts but does not run, the tensors are identical."""
    v = r["verdict"]
    if v == "stquant refused" or v == "identical":
        return True
    if v.startswith("reference failed"):
        return r.get("tokens") is not None
    if v.startswith("reference does not generate"):
        return not r["diffs"]
    return False


def describe(r: dict) -> str:
    head = f"{r['arch'] + ('-' + r['variant'] if r['variant'] else ''):24} {r['type']:6} "
    if r["verdict"] == "identical":
        return head + "identical"
    if r["verdict"].startswith("stquant"):
        return head + f"{r['verdict']}: {r['stquant_error']}"
    if r["verdict"].startswith("reference failed"):
        return head + f"{r['verdict'][:200]} (mlx_lm.convert: {r['reference']['error'][:200]})"
    if not r["diffs"]:
        return head + r["verdict"]
    d = r["diffs"][0]
    return head + f"{r['verdict']}: {d['class']}: {d['detail']}: {d['names'][0]}" + (
        f" (+{len(r['diffs']) - 1} more classes)" if len(r["diffs"]) > 1 else "")


def check_ollama(arch: str, type_name: str = "int4") -> dict:
    """--layout ollama of the v5 form: the store reads back (tests/python/test_ollama_store.py's
    reader) and every quantized tensor equals pip mx.quantize of the source values with the
    blob's mode and group size, every other tensor its source bytes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_ollama_store import check_model

    src = materialize(arch, "v5")
    r = {"arch": arch, "type": "ollama-" + type_name, "variant": "", "diffs": [], "stquant_error": None}
    with tempfile.TemporaryDirectory(prefix=f"zoo-ollama-{arch}-") as store:
        proc = subprocess.run([str(stquant_binary()), "convert", str(src), "--layout", "ollama", "--name",
                               f"zoo/{arch}", "--models-dir", store, "--quiet", "-q", type_name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            r["stquant"] = "refused" if proc.returncode == 2 else "failed"
            r["stquant_error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
            r["verdict"] = f"stquant {r['stquant']}"
            return r
        r["stquant"] = "ok"
        try:
            _, quant = check_model(Path(store), f"zoo/{arch}", src)
            r["quantized"] = len(quant)
            r["verdict"] = "identical" if quant else "differs"
            if not quant:
                r["diffs"].append({"class": "ollama", "detail": "nothing quantized", "names": [""]})
        except BaseException as e:  # noqa: B036
            if isinstance(e, KeyboardInterrupt):
                raise
            r["verdict"] = "differs"
            r["diffs"].append({"class": "ollama", "detail": "store check failed", "names": [short_error(e)]})
    return r


def run_arch(arch: str, types: list[str], fp8: bool, ollama: bool, keep: Path | None = None):
    """Every check of one arch, one result (dict) at a time."""
    for t in types:
        yield check(arch, t, keep=keep)
    if fp8 and arch in FP8_VARIANTS:
        for t in types:
            yield check(arch, t, variant="fp8", keep=keep)
    if ollama:
        yield check_ollama(arch)


def run_worker(arch: str, args):
    """run_arch in a child process (a model module may exit or crash the interpreter)."""
    cmd = [sys.executable, str(Path(__file__).resolve().with_name("zoo.py")), "_worker", arch, "--types", args.types]
    cmd += (["--fp8"] if args.fp8 else []) + (["--ollama"] if args.ollama else [])
    cmd += ["--keep", str(Path(args.keep).resolve())] if args.keep else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.time() + args.timeout


def ref_counts(rs) -> str:
    refs = [r.get("reference") for r in rs if r.get("reference")]
    if not refs:
        return "-"
    converts = sum(1 for x in refs if x["ok"] or x["stage"] == "generate")
    return f"{converts} / {sum(1 for x in refs if x['ok'])}"


def summarize(results: list[dict]) -> list[str]:
    lines = []
    by_type = {}
    for r in results:
        key = r["type"] + (" (" + r["variant"] + ")" if r["variant"] else "")
        by_type.setdefault(key, []).append(r)
    for key, rs in by_type.items():
        counts = {}
        for r in rs:
            v = r["verdict"].split(";")[0].split(":")[0]
            counts[v] = counts.get(v, 0) + 1
        lines.append(f"{key:14} {len(rs)} archs: "
                     + (f"mlx_lm.convert converts / and runs {ref_counts(rs)}; " if "reference" in rs[0] else "")
                     + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return lines


def cmd_check(args) -> int:
    names = args.archs or (DEFAULT_SUBSET if args.subset else archs())
    unknown = [a for a in names if a not in archs()]
    if unknown:
        print(f"zoo-check: error: unknown arch {', '.join(unknown)} (see tests/zoo/)", file=sys.stderr)
        return 2
    types = args.types.split(",")
    if not set(types) <= set(TYPES):
        print(f"zoo-check: error: unknown type in --types {args.types} (types: {','.join(TYPES)})", file=sys.stderr)
        return 2
    if not stquant_binary().is_file():
        print(f"zoo-check: error: {stquant_binary()} does not exist (build it, or set STQUANT_BUILD_DIR)", file=sys.stderr)
        return 2
    t0 = time.time()
    pending, running, results = list(names), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            arch = pending.pop(0)
            running.append((arch, *run_worker(arch, args)))
        time.sleep(0.05)
        for item in list(running):
            arch, proc, deadline = item
            if proc.poll() is None and time.time() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
            got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if proc.returncode != 0 and not got:
                why = "timed out" if time.time() >= deadline else (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                got = [{"arch": arch, "type": t, "variant": "", "verdict": "harness failed", "diffs": [],
                        "stquant_error": why[:300]} for t in types]
            for r in got:
                print(describe(r) if r["verdict"] != "harness failed" else f"{arch:24} {r['type']:6} harness failed: {r['stquant_error']}", flush=True)
            results += got
            running.remove(item)
    print(f"--- {len(names)} archs, {len(results)} checks in {time.time() - t0:.0f} s")
    for line in summarize(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"mlx_lm": mlx_lm_version(), "results": results}, indent=1) + "\n")
    return 0 if all(r["verdict"] == "identical" for r in results) else 1


def cmd_worker(args) -> int:
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    for r in run_arch(args.arch, args.types.split(","), args.fp8, args.ollama, keep):
        print(json.dumps(r), flush=True)
    return 0
