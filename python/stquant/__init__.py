"""stquant: Hugging Face safetensors checkpoints to MLX-quantized models, byte-exact with MLX.

    import stquant
    stquant.convert("Qwen/Qwen3-8B", "qwen3-8b-int4", q="int4")   # a directory mlx_lm.load opens
    stquant.mlx_convert(hf_path="Qwen/Qwen3-8B", mlx_path="out", quantize=True)  # mlx_lm.convert's
    stquant.inspect("qwen3-8b-int4")                              # -> dict
    wq, scales, biases = stquant.quantize(w, "affine", 4, 64)     # == mx.quantize(w, 64, 4)

Everything runs in the compiled extension (the C++ library of the `stquant` command), with the
GIL released. Failures raise stquant.Error subclasses carrying the command line's one-line
messages. See docs/python.md.
"""
import json as _json
import os as _os
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

from . import _stquant
from ._errors import (
    Error,
    InputError,
    InternalError,
    InvalidArgumentError,
    InvalidInputError,
    IOFailureError,
    UnsupportedError,
)

__version__ = "0.1.0"
__all__ = [
    "convert",
    "mlx_convert",
    "inspect",
    "quantize",
    "dequantize",
    "resolve_model",
    "hf_hub_cache_dir",
    "Progress",
    "Error",
    "InputError",
    "InvalidArgumentError",
    "InvalidInputError",
    "UnsupportedError",
    "IOFailureError",
    "InternalError",
]

_Path = Union[str, "_os.PathLike[str]"]


class Progress:
    """What a progress callback receives, after each chunk of a conversion."""

    __slots__ = ("tensors_done", "tensors_total", "bytes_done", "bytes_total", "current")

    def __init__(self, tensors_done, tensors_total, bytes_done, bytes_total, current):
        self.tensors_done = tensors_done
        self.tensors_total = tensors_total
        self.bytes_done = bytes_done  # input bytes read so far
        self.bytes_total = bytes_total
        self.current = current  # the tensor being written

    def __repr__(self):
        return (f"Progress(tensors {self.tensors_done}/{self.tensors_total}, "
                f"bytes {self.bytes_done}/{self.bytes_total}, current={self.current!r})")


class _TqdmBar:
    """A tqdm bar over the input bytes, shown from the first progress report (a conversion refused
    before it starts shows none) and closed when the conversion ends."""

    def __init__(self):
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        self.bar = None

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=p.bytes_total, unit="B", unit_scale=True, unit_divisor=1024, desc="stquant")
        self.bar.update(p.bytes_done - self.bar.n)
        self.bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _run_with_progress(call, progress):
    """progress: None (a tqdm bar when tqdm is installed), False (none), or a callable."""
    bar = None
    if progress is None:
        try:
            bar = _TqdmBar()
        except ImportError:
            bar = None
        progress = bar
    elif progress is False:
        progress = None
    elif not callable(progress):
        raise InvalidArgumentError("progress must be None, False or a callable taking a stquant.Progress")
    raw = None if progress is None else (lambda *fields: progress(Progress(*fields)))
    try:
        return call(raw)
    finally:
        if bar is not None:
            bar.close()


def _str(path) -> str:
    return "" if path is None else _os.fspath(path)


def convert(
    src: Optional[_Path],
    out: Optional[_Path] = None,
    q: Optional[str] = "int4",
    layout: str = "mlx",
    *,
    mode: Optional[str] = None,
    bits: Optional[int] = None,
    group_size: Optional[int] = None,
    profile: str = "mlx-cpu",
    recipe: Optional[str] = None,
    overrides: Union[Dict[str, str], Iterable[Tuple[str, str]], None] = None,
    policy: Optional[str] = None,
    name: Optional[str] = None,
    models_dir: Optional[_Path] = None,
    modelfile: Optional[_Path] = None,
    draft: Optional[_Path] = None,
    draft_q: Optional[str] = None,
    shard_size: int = 5 << 30,
    threads: int = 0,
    force: bool = False,
    requantize: bool = False,
    revision: Optional[str] = None,
    dtype: Optional[str] = None,
    dry_run: bool = False,
    progress: Union[None, bool, Callable[[Progress], None]] = None,
) -> dict:
    """`stquant convert`: a Hugging Face checkpoint into an MLX model directory (layout "mlx",
    `out`) or a model of an ollama store (layout "ollama", `name`).

    src: a model directory, or a repo id ("Qwen/Qwen3-8B", at `revision`) in the local Hugging
      Face cache; never downloaded.
    q: "int2".."int8", "mxfp4", "mxfp8", "nvfp4" (ollama layout: also ollama's q4, fp4, q8, fp8);
      None: no quantization. Or `mode` (affine, mxfp4, mxfp8, nvfp4) with `bits`/`group_size`.
    recipe: mlx-lm's mixed_2_6 / mixed_3_4 / mixed_3_6 / mixed_4_6. overrides: {regex: type or
      "keep"}, first match wins. dtype: float16 / bfloat16 / float32 for the float tensors.
    progress: None shows a tqdm bar when tqdm is installed; False shows nothing; a callable gets a
      stquant.Progress after each chunk (an exception it raises ends the call once the conversion
      is over).
    Returns the summary (tensors, bytes, seconds, peak RSS, warnings, ...); with dry_run, the plan
    (every output tensor with its sources, transform and type; ollama: its blob) without writing.
    """
    if isinstance(overrides, dict):
        overrides = list(overrides.items())
    call = lambda raw: _stquant.convert(  # noqa: E731
        _str(src), _str(out), q, layout, mode, bits, group_size, profile, recipe or "",
        [(str(k), str(v)) for k, v in (overrides or [])], policy or "", name or "", _str(models_dir),
        _str(modelfile), _str(draft), draft_q, int(shard_size), int(threads), bool(force), bool(requantize),
        revision or "", dtype, bool(dry_run), raw)
    if dry_run:
        return _json.loads(call(None))
    return _run_with_progress(call, progress)


def mlx_convert(
    hf_path: _Path,
    mlx_path: _Path = "mlx_model",
    quantize: bool = False,
    q_group_size: Optional[int] = None,
    q_bits: Optional[int] = None,
    q_mode: str = "affine",
    dtype: Optional[str] = None,
    upload_repo: Optional[str] = None,
    revision: Optional[str] = None,
    dequantize: bool = False,
    quant_predicate: Optional[str] = None,
    trust_remote_code: bool = False,
    *,
    progress: Union[None, bool, Callable[[Progress], None]] = None,
) -> dict:
    """mlx_lm.convert's signature and defaults (mlx-lm 0.32.2), carried out by stquant offline:
    a repo id is read from the local Hugging Face cache, upload_repo is refused. quant_predicate
    is one of mlx-lm's recipe names (a callable is not supported)."""
    if quant_predicate is not None and not isinstance(quant_predicate, str):
        raise InvalidArgumentError("quant_predicate: stquant takes mlx-lm's recipe names "
                                   "(mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6), not a callable")
    call = lambda raw: _stquant.mlx_convert(  # noqa: E731
        _str(hf_path), _str(mlx_path), bool(quantize), q_group_size, q_bits, q_mode, dtype, upload_repo, revision,
        bool(dequantize), quant_predicate, bool(trust_remote_code), raw)
    return _run_with_progress(call, progress)


def inspect(path: _Path, *, ollama: bool = False, models_dir: Optional[_Path] = None) -> dict:
    """`stquant inspect --json`: what a .safetensors file or a model directory holds (headers
    only), or with ollama=True / models_dir, a model of an ollama store by name."""
    if ollama or models_dir is not None:
        return _json.loads(_stquant.inspect_ollama_json(_str(models_dir), _str(path)))
    return _json.loads(_stquant.inspect_json(_str(path)))


def resolve_model(source: _Path, revision: Optional[str] = None) -> str:
    """The directory `convert` reads for `source`: an existing path as it is, else a repo id's
    snapshot in the Hugging Face cache (InvalidArgumentError saying how to fetch it when absent)."""
    return _stquant.resolve_model_source(_str(source), revision or "")


def hf_hub_cache_dir() -> str:
    """The Hugging Face cache directory repo ids are looked up in (huggingface_hub's rules)."""
    return _stquant.hf_hub_cache_dir()


# ---- arrays ---------------------------------------------------------------------------------------


def _is_mlx(x) -> bool:
    return type(x).__module__.startswith("mlx")


def _as_kernel_input(x):
    """(array the extension reads, dtype override). mlx arrays and anything with DLPack or the
    buffer protocol go in as they are (no copy); numpy bfloat16 (ml_dtypes) as its uint16 bits."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and type(x).__module__ == "numpy" and str(dtype) == "bfloat16":
        import numpy as np

        return np.ascontiguousarray(x).view(np.uint16), "bfloat16"
    if _is_mlx(x) or hasattr(x, "__dlpack__") or _has_buffer(x):
        return x, ""
    import numpy as np

    return np.asarray(x), ""


def _has_buffer(x) -> bool:
    try:
        memoryview(x)
        return True
    except TypeError:
        return False


def _is_bfloat16(x) -> bool:
    return str(getattr(x, "dtype", "")).endswith("bfloat16")


def _output(arrays, like_mlx: bool, bfloat16_positions):
    """numpy results of the extension as the caller's kind of array: mlx arrays for mlx input,
    numpy otherwise; uint16 stands for bfloat16 at `bfloat16_positions`."""
    results = []
    for i, a in enumerate(arrays):
        bf16 = i in bfloat16_positions
        if like_mlx:
            import mlx.core as mx

            m = mx.array(a)
            results.append(m.view(mx.bfloat16) if bf16 else m)
        elif bf16:
            import ml_dtypes

            results.append(a.view(ml_dtypes.bfloat16))
        else:
            results.append(a)
    return results


def _global_scale(value) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise InvalidArgumentError("global_scale must be a float32 scalar") from None


def quantize(w, mode: str = "affine", bits: Optional[int] = None, group_size: Optional[int] = None, *,
             global_scale=None, threads: int = 0):
    """mx.quantize(w, group_size, bits, mode, global_scale=...), byte for byte with MLX's CPU
    backend: (packed uint32, scales[, biases]) for w of shape [..., K] (bfloat16, float16 or
    float32). w may be a numpy array (bfloat16 through ml_dtypes), an mx.array (read without a
    copy, results returned as mx.array) or anything with DLPack or the buffer protocol. bits and
    group_size default to the mode's (affine 4/64, mxfp4 4/32, mxfp8 8/32, nvfp4 4/16).
    A NaN or Inf in w raises InvalidInputError (MLX's output for it is undefined)."""
    x, override = _as_kernel_input(w)
    bf16 = _is_bfloat16(w)
    out = _stquant.quantize(x, override, mode, bits, group_size, _global_scale(global_scale), int(threads))
    positions = {1, 2} if (bf16 and mode == "affine") else set()
    return tuple(_output(out, _is_mlx(w), positions))


def dequantize(w, scales, biases=None, mode: str = "affine", bits: Optional[int] = None,
               group_size: Optional[int] = None, *, global_scale=None, dtype: Optional[str] = None):
    """mx.dequantize(w, scales, biases, group_size, bits, mode, global_scale=..., dtype=...),
    byte for byte with MLX's CPU backend. dtype (float32, float16, bfloat16) defaults to MLX's: the
    scales' for affine, bfloat16 for the fp modes, float32 for nvfp4 with a global scale."""
    wx, _ = _as_kernel_input(w)
    sx, override = _as_kernel_input(scales)
    bx = None if biases is None else _as_kernel_input(biases)[0]
    if dtype is not None and not isinstance(dtype, str):
        dtype = str(dtype).split(".")[-1]  # mx.float16 / np.dtype -> "float16"
    out = _stquant.dequantize(wx, sx, bx, override, mode, bits, group_size, _global_scale(global_scale), dtype or "")
    if dtype:
        out_bf16 = dtype == "bfloat16"
    elif mode == "affine":
        out_bf16 = _is_bfloat16(scales)
    else:
        out_bf16 = global_scale is None
    return _output([out], _is_mlx(w), {0} if out_bf16 else set())[0]
