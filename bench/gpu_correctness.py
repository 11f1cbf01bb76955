"""Section (a) of bench/gpu_check.py: every sampler and every accelerator on the checked device in half precision,
against the same run (same weights, seed, noise) in float32 on the CPU.

Oracle and tolerance: the CPU float32 run. A half-precision run differs by rounding only; the final latent's
relative L2 error ``|out - ref| / |ref|`` must stay under ``TOLERANCE[dtype]``. bf16 has an 8-bit mantissa (unit
roundoff 2^-9 = 0.2 %), fp16 an 11-bit one (2^-12); a model call compounds a few dozen such roundings, CFG 4
multiplies the cond - uncond difference (and its error) by 4, and the steps add up: measured on the CPU, the built-in
model's bf16 runs land 5-11 % from float32 (PSNR 34-37 dB), fp16 runs 0.5-0.8 % (PSNR 52-56 dB). 20 % (bf16) and
3 % (fp16) leave room for other kernels while a wrong device, dtype or formula moves the result by 50-150 %. On the
built-in model the image PSNR is reported too.

``--tiny`` (the CPU run in CI) checks a representative sampler of each family instead of all of them, in bf16 only
(float16 matrix products are emulated, and slow, on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from gpu_models import DTYPES, Spec, conditioning, negative, reference_and_device, spec

TOLERANCE = {"bf16": 0.2, "fp16": 0.03, "fp32": 1e-3}
TINY_SAMPLERS = ("euler", "heun", "dpmpp_2m", "uni_pc", "euler_ancestral", "dpmpp_2m_sde", "restart", "lcm",
                 "euler_dualfast", "flowturbo_hp", "adaptive_ode", "paradigms", "euler_cfg_pp", "sa_solver",
                 "dc_solver", "dpm_solver_v3")


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float().cpu() - ref).norm() / ref.norm().clamp_min(1e-12))


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (data range 2)."""
    mse = float((out.float().cpu().clamp(-1, 1) - ref.clamp(-1, 1)).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def accelerator_cases(s: Spec) -> dict[str, tuple[Callable, object]]:
    """name -> (model patch ``fn(DiffusionModel) -> DiffusionModel``, sampler name or SamplerInfo)."""
    from turbosample.accel.magcache import MagCacheSettings, magcache_model
    from turbosample.accel.ras import apply_ras
    from turbosample.nodes.loop_accel_nodes import bottleneck_info

    def mag(model, steps):
        curve = tuple(1.0 for _ in range(steps))  # flat: skips follow the threshold and K alone (as on the CPU)
        return magcache_model(model, MagCacheSettings({0: curve, 1: curve}, 0.1, 2, 0.25))

    same = lambda m, _steps: m  # noqa: E731
    cases = {
        "magcache": (mag, "euler"),
        "ras": (lambda m, _s: apply_ras(m, sample_ratio=0.5, warmup_steps=2, dense_every=0), "euler"),
        "ras_int8": (lambda m, _s: apply_ras(m, sample_ratio=0.5, warmup_steps=2, dense_every=0, kv_cache="int8"),
                     "euler"),
        "ras_cuda_graph": (lambda m, _s: apply_ras(m, sample_ratio=0.5, warmup_steps=2, dense_every=0,
                                                   cuda_graph=True), "euler"),
        "magcache+ras": (lambda m, s_: apply_ras(mag(m, s_), sample_ratio=0.5, warmup_steps=2, dense_every=0),
                         "euler"),
        "ras_heun": (lambda m, _s: apply_ras(m, sample_ratio=0.5, warmup_steps=2, dense_every=0), "heun"),
    }
    if s.name != "wan":  # Bottleneck Sampling resizes images; it refuses video latents by design
        cases["bottleneck"] = (same, bottleneck_info("euler", "1, 0.5, 1", "1, 0.6, 0.4", "1, 2, 2", "", "bilinear"))
    if s.cls is None:
        cases["attention_auto"] = ("attention", "euler")
        cases["flowturbo_refiner"] = ("flowturbo", "flowturbo")
    return cases


def prepare(case: object, model, device: torch.device, steps: int):
    """Apply a case's model patch; special cases need the device (attention backends, FlowTurbo's refiner)."""
    from turbosample.samplers.registry import SAMPLERS

    patch, sampler = case
    if patch == "attention":
        from turbosample.accel.attention import apply_attention_backend

        model = apply_attention_backend(model, "auto", device)[0]
        return model, SAMPLERS[sampler]
    if patch == "flowturbo":
        from turbosample.nodes.flowturbo_nodes import flowturbo_info

        return model, flowturbo_info(model, "builtin", "H1P*R1", "off")
    return patch(model, steps), SAMPLERS[sampler] if isinstance(sampler, str) else sampler


def run_family(name: str, args, rec, device: torch.device) -> None:
    """Every sampler and accelerator of one family, CPU float32 against the device in each dtype."""
    from turbosample.samplers.registry import SAMPLERS
    from turbosample.samplers.run import sample
    from turbosample.samplers.schedulers import compute_sigmas

    s = spec(name, tiny=True) if name != "builtin" else spec(name, tiny=args.tiny)
    steps = 4 if args.tiny else 8
    pos, neg = conditioning(s, 1), negative(s)
    latent = torch.zeros(s.latent)
    models = {dt: reference_and_device(s, device, DTYPES[dt]) for dt in args.dtypes}
    ref_model = next(iter(models.values()))[0]
    sigmas = compute_sigmas(ref_model.model_sampling, "simple", steps)
    cfg = 1.0 if s.guidance is not None else s.cfg
    names = [n for n in SAMPLERS if n in TINY_SAMPLERS or not args.tiny]
    if args.tiny and s.cls is not None:
        names = names[:3]
    cases: dict[str, object] = {f"sampler/{n}": (lambda m, _s: m, n) for n in names}
    cases.update({f"accel/{k}": v for k, v in accelerator_cases(s).items()})
    if args.only:
        cases = {k: v for k, v in cases.items() if any(o in k for o in args.only)}
    failures = 0
    for label, case in cases.items():
        if rec.out_of_time(f"correctness {name} {label}"):
            return
        row = {"section": "correctness", "model": name, "case": label, "steps": steps, "cfg": cfg}
        try:
            ref_run, info = prepare(case, ref_model, torch.device("cpu"), steps)
            with torch.no_grad():
                ref = sample(ref_run, pos, neg, latent, info, sigmas, 0, cfg)
        except Exception as exc:  # noqa: BLE001
            rec.write(**row, dtype="fp32-cpu", ok=False, error=rec.error_text(exc))
            failures += 1
            continue
        for dt, (_ref, dev_model) in models.items():
            start = time.perf_counter()
            try:
                run, info = prepare(case, dev_model, device, steps)
                with torch.no_grad():
                    out = sample(run, pos, neg, latent, info, sigmas, 0, cfg)
                err = rel_l2(out, ref)
                ok = bool(torch.isfinite(out).all()) and err <= TOLERANCE[dt] and out.dtype == torch.float32
                extra = {"psnr_db": round(psnr(out, ref), 2)} if s.cls is None else {}
                rec.write(**row, dtype=dt, ok=ok, rel_l2=round(err, 6), tolerance=TOLERANCE[dt],
                          seconds=round(time.perf_counter() - start, 3), **extra)
                failures += not ok
            except Exception as exc:  # noqa: BLE001
                rec.write(**row, dtype=dt, ok=False, error=rec.error_text(exc))
                failures += 1
    rec.write(section="correctness", model=name, case="summary", failures=failures, cases=len(cases),
              dtypes=list(args.dtypes), device=str(device))


def calibrations(args, rec, device: torch.device) -> None:
    """MagCache, DC-Solver and DPM-Solver-v3 (EMS) calibration on the device in each dtype: they run, stay finite
    and agree with the CPU float32 result (ratios and statistics to the same tolerance)."""
    from turbosample.accel.magcache_calibration import calibrate as magcache_calibrate
    from turbosample.samplers.dc_calibration import calibrate_for_model
    from turbosample.samplers.ems import estimate_ems
    from turbosample.samplers.noise import seeded_noise
    from turbosample.samplers.registry import SAMPLERS
    from turbosample.samplers.schedulers import compute_sigmas

    s = spec("builtin", tiny=True)
    pos, neg = conditioning(s, 1), negative(s)
    steps = 6

    def magcache(model, dev):
        sig = compute_sigmas(model.model_sampling, "simple", steps)
        cal = magcache_calibrate(model, pos, neg, torch.zeros(s.latent), SAMPLERS["euler"], sig, 0, 4.0)
        return torch.tensor([v for b in sorted(cal.ratios) for v in cal.ratios[b]])

    def dc(model, dev):
        found = calibrate_for_model(model, pos, neg, 4.0, 5, s.latent, samples=1, reference_nfe=20)
        return torch.tensor(found["ratios"])

    def ems(model, dev):
        from turbosample.samplers.denoiser import cfg_denoiser

        noise = seeded_noise(0, (1, *s.latent[1:]), device=dev)
        stats = estimate_ems(cfg_denoiser(model, pos, neg, 4.0, {"sample_sigmas": None, "run_state": {}}),
                             model.model_sampling, noise, grid_points=8, probes=1)
        return torch.cat([stats.ell.flatten().float().cpu(), stats.s.flatten().float().cpu()])

    for label, fn in (("magcache_calibrate", magcache), ("dc_solver_calibrate", dc), ("ems", ems)):
        if rec.out_of_time(f"calibration {label}"):
            return
        for dt in args.dtypes:
            row = {"section": "correctness", "model": "builtin", "case": f"calibration/{label}", "dtype": dt}
            try:
                ref_model, dev_model = reference_and_device(s, device, DTYPES[dt])
                with torch.no_grad():
                    ref = fn(ref_model, torch.device("cpu"))
                    out = fn(dev_model, device)
                err = rel_l2(out, ref)
                finite = bool(torch.isfinite(out).all())
                if label == "ems":  # finite differences (fd_scale 1e-2) of outputs rounded at 2^-9: informative only
                    rec.write(**row, ok=finite, rel_l2=round(err, 6), note="finite-difference statistics; half "
                              "precision resolves them poorly, the value is reported, not judged")
                else:
                    rec.write(**row, ok=finite and err <= TOLERANCE[dt], rel_l2=round(err, 6),
                              tolerance=TOLERANCE[dt])
            except Exception as exc:  # noqa: BLE001
                rec.write(**row, ok=False, error=rec.error_text(exc))


def run(args, rec) -> None:
    device = torch.device(args.device)
    for name in args.families:
        run_family(name, args, rec, device)
    calibrations(args, rec, device)
