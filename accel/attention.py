"""The attention backend setting ``auto | sdpa | xformers`` and how it is applied to a model.

``resolve_backend(setting, device)`` returns ``(name, fn, reason)``; ``fn(q, k, v)`` takes (B, heads, N, head_dim)
tensors like ``torch.nn.functional.scaled_dot_product_attention``.

* ``sdpa``: torch's fused kernel; never probes anything.
* ``xformers``: used only if it is importable, the device is CUDA, and a tiny probe call on that device runs and
  matches SDPA. If not, **an AttentionBackendError is raised** naming the reason (an explicit request is not
  silently replaced, so a benchmark never measures the wrong kernel); ``auto`` is the forgiving setting.
* ``auto``: xformers when it passes the same checks *and* is faster than SDPA on a few timed calls on this device
  (on Hopper with torch >= 2.11 SDPA usually wins); otherwise SDPA. The choice and its reason are logged once.

Results are cached per (setting, device) for the process (``clear_cache()`` forgets them).

Applying it (never mutating a shared model):

* built-in model: ``apply_attention_backend`` returns a DiffusionModel whose network is a weight-sharing copy
  with every block's ``attention`` replaced. Block-stack accelerators (MagCache, RAS) hold the blocks they were
  given, so the backend must be applied before them; applying it after them is refused with a message.
* diffusers models (``DiffusersDiT``): an outermost wrapper runs every call inside diffusers'
  ``attention_backend(...)`` context (``native`` for sdpa, ``xformers``), so accelerators that run the blocks
  themselves see it too. Attention modules given an explicit backend with ``set_attention_backend`` keep it.
  The context sets diffusers' process-wide active backend for the duration of the call (not thread-safe across
  concurrent calls of differently configured models). SD3's processors bypass the dispatcher (diffusers 0.42),
  so xformers cannot be applied to SD3 this way: explicit ``xformers`` is refused, ``auto`` falls back to SDPA.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .adapter import AttentionFn, UnsupportedModel
from .stacking import BLOCK_STACK_OWNERS, wrapper_keys

SETTINGS = ("auto", "sdpa", "xformers")
WRAPPER_KEY = "turbosample.attention"
DIFFUSERS_NAMES = {"sdpa": "native", "xformers": "xformers"}
PROBE_SHAPE = (1, 2, 64, 64)      # (B, heads, N, head_dim) of the correctness probe
TIMING_SHAPE = (2, 8, 1024, 64)   # of the speed comparison in ``auto``
logger = logging.getLogger("turbosample.attention")


class AttentionBackendError(ValueError):
    """The requested attention backend is unknown or cannot run here."""


class ResolvedBackend(NamedTuple):
    name: str          # "sdpa" or "xformers"
    fn: AttentionFn
    reason: str


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's scaled-dot-product attention over (B, heads, N, head_dim)."""
    return F.scaled_dot_product_attention(q, k, v)


def xformers_attention(ops) -> AttentionFn:
    """``ops.memory_efficient_attention`` (B, N, heads, head_dim layout) as an (B, heads, N, head_dim) function."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return attention


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def device_problem(device: torch.device) -> str | None:
    """Why xformers cannot run on ``device`` (None: it is a usable CUDA device)."""
    if device.type != "cuda":
        return f"xformers has no kernels for {device.type} tensors (needs a CUDA device)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def probe_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def probe(fn: AttentionFn, device: torch.device) -> str | None:
    """Run ``fn`` on a tiny input on ``device`` and compare with SDPA; the problem, or None when it matches."""
    dtype = probe_dtype(device)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(PROBE_SHAPE, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    try:
        got = fn(q, k, v)
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party kernel means "not usable"
        return f"xformers failed its probe call on {device}: {first_line(exc)}"
    want = sdpa(q, k, v)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return f"xformers returned shape {tuple(getattr(got, 'shape', ()))} instead of {tuple(want.shape)}"
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    err = float((got.float() - want.float()).abs().max())
    if not err <= tol:
        return f"xformers differs from SDPA by {err:.3g} (tolerance {tol:g}) on {device}"
    return None


def xformers_backend(device: torch.device) -> tuple[AttentionFn | None, str]:
    """xformers' attention if every check passes on ``device``, else (None, why not)."""
    try:
        import xformers.ops as ops
    except Exception as exc:  # noqa: BLE001 - broken installs raise all sorts of errors at import
        return None, f"xformers is not importable ({first_line(exc)})"
    problem = device_problem(device)
    if problem:
        return None, problem
    fn = xformers_attention(ops)
    problem = probe(fn, device)
    return (None, problem) if problem else (fn, "xformers loads and matches SDPA")


def seconds_per_call(fn: AttentionFn, device: torch.device, repeats: int = 5) -> float:
    """Median wall time of ``fn`` on a TIMING_SHAPE input after two warm-up calls."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(TIMING_SHAPE, generator=gen).to(device=device, dtype=probe_dtype(device))
               for _ in range(3))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 2):
        sync()
        start = time.perf_counter()
        fn(q, k, v)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_CACHE: dict[tuple[str, str], ResolvedBackend] = {}


def clear_cache() -> None:
    """Forget resolved backends (probes and timings run again)."""
    _CACHE.clear()


def _resolve(setting: str, device: torch.device) -> ResolvedBackend:
    if setting == "sdpa":
        return ResolvedBackend("sdpa", sdpa, "sdpa requested")
    fn, why = xformers_backend(device)
    if setting == "xformers":
        if fn is None:
            raise AttentionBackendError(f"attention backend 'xformers' was requested but cannot be used: {why}; "
                                        f"choose 'sdpa' or 'auto'")
        return ResolvedBackend("xformers", fn, f"xformers requested; {why}")
    if fn is None:
        chosen = ResolvedBackend("sdpa", sdpa, f"auto: using SDPA because {why}")
    else:
        t_x, t_s = seconds_per_call(fn, device), seconds_per_call(sdpa, device)
        timing = f"xformers {t_x * 1e3:.3f} ms vs SDPA {t_s * 1e3:.3f} ms per call at {TIMING_SHAPE} on {device}"
        chosen = (ResolvedBackend("xformers", fn, f"auto: using xformers ({timing})") if t_x < t_s
                  else ResolvedBackend("sdpa", sdpa, f"auto: using SDPA ({timing})"))
    logger.info("attention backend: %s", chosen.reason)
    return chosen


def resolve_backend(setting: str = "auto", device: torch.device | str | None = None) -> ResolvedBackend:
    """``(name, fn, reason)`` for ``setting`` on ``device`` (default: CUDA if available, else CPU)."""
    if setting not in SETTINGS:
        raise AttentionBackendError(f"unknown attention backend {setting!r}; choose one of {', '.join(SETTINGS)}")
    device = torch.device(device) if device is not None else default_device()
    key = (setting, str(device))
    if key not in _CACHE:
        _CACHE[key] = _resolve(setting, device)
    return _CACHE[key]


# --- applying it ---------------------------------------------------------------------------------------------

def with_block_attention(dit: torch.nn.Module, fn: AttentionFn) -> torch.nn.Module:
    """A copy of a TinyDiT-like model (``blocks`` with an ``attention`` attribute) sharing every weight, whose
    blocks use ``fn``; ``dit`` itself is not modified."""
    blocks = getattr(dit, "blocks", None)
    if blocks is None or not all(hasattr(b, "attention") for b in blocks):
        raise UnsupportedModel(f"{type(dit).__name__} has no blocks with a replaceable attention function")
    patched = copy.copy(dit)
    patched._modules = dict(dit._modules)
    new_blocks = []
    for block in blocks:
        twin = copy.copy(block)  # shares parameters and sub-modules; its own __dict__
        twin.attention = fn
        new_blocks.append(twin)
    patched.blocks = torch.nn.ModuleList(new_blocks)
    return patched


def is_diffusers_model(network: torch.nn.Module) -> bool:
    """A diffusers model, or one of our wrappers around diffusers models (DiffusersDiT, UNet, Wan experts)."""
    return any(hasattr(m, "set_attention_backend") for m in network.modules())


def dispatches_attention(network: torch.nn.Module) -> bool:
    """Whether every attention processor of a diffusers model goes through ``attention_dispatch`` (SD3's
    ``JointAttnProcessor2_0`` in diffusers 0.42 calls SDPA directly and ignores the backend setting)."""
    processors = [getattr(m, "processor", None) for m in network.modules() if hasattr(m, "processor")]
    return bool(processors) and all(hasattr(p, "_attention_backend") for p in processors)


def diffusers_backend_wrapper(name: str) -> Callable:
    """A DiffusionModel wrapper running each call inside diffusers' ``attention_backend`` context."""
    try:
        from diffusers.models.attention_dispatch import attention_backend
    except ImportError as exc:
        raise UnsupportedModel(f"this diffusers version has no attention_backend context ({exc})") from None
    backend = DIFFUSERS_NAMES[name]

    def wrapper(forward, x, timestep, context, options):
        with attention_backend(backend):
            return forward(x, timestep, context, options)

    return wrapper


def model_device(network: torch.nn.Module) -> torch.device:
    param = next(network.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def apply_attention_backend(model, setting: str = "auto", device: torch.device | str | None = None):
    """A patched copy of a DiffusionModel using the resolved backend, and the resolution ``(name, fn, reason)``.

    Raises AttentionBackendError (bad/unusable setting) or UnsupportedModel before anything is patched.
    """
    network = model.diffusion_model
    resolved = resolve_backend(setting, device if device is not None else model_device(network))
    if is_diffusers_model(network):
        inner = getattr(network, "transformer", network)
        if resolved.name == "xformers" and not dispatches_attention(inner):
            why = f"{type(inner).__name__}'s attention processors call SDPA directly, not diffusers' dispatcher"
            if setting == "xformers":
                raise AttentionBackendError(f"attention backend 'xformers' cannot be applied: {why}")
            resolved = ResolvedBackend("sdpa", sdpa, f"auto: using SDPA because {why}")
            logger.info("attention backend: %s", resolved.reason)
        wrapper = diffusers_backend_wrapper(resolved.name)
        kept = tuple((k, w) for k, w in model.wrappers if k != WRAPPER_KEY)
        return replace(model, wrappers=((WRAPPER_KEY, wrapper), *kept)), resolved  # outermost
    owners = sorted({BLOCK_STACK_OWNERS[k] for k in wrapper_keys(model) if k in BLOCK_STACK_OWNERS})
    if owners:
        raise AttentionBackendError(f"apply the attention backend before {', '.join(owners)}: those hold the "
                                    f"model's blocks and would keep the old attention")
    return replace(model, diffusion_model=with_block_attention(network, resolved.fn)), resolved
