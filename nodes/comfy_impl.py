"""ComfyUI-side implementations of the nodes whose values are ComfyUI objects (MODEL, SAMPLER, sampling).

Imported by the pack's package at load time but touches ``comfy`` only inside the functions.
"""

from __future__ import annotations


def load_builtin_model(flow_shift: float) -> tuple:
    from ..models.builtin import cached_model
    from .comfy_model import builtin_model_patcher

    return (builtin_model_patcher(cached_model(), flow_shift),)


def select_sampler(sampler_name: str) -> tuple:
    import comfy.samplers

    from ..samplers.registry import get_sampler

    info = get_sampler(sampler_name)
    return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)


def sample(model, positive, negative, sampler, sigmas, latent_image, seed: int, cfg: float) -> tuple:
    """Runs through ComfyUI's own sampling (``comfy.sample.sample_custom``) with its preview callback."""
    import comfy.sample
    import latent_preview

    from ..samplers.validate import check_finite, check_sigmas

    check_sigmas(sigmas.float().cpu())
    latent = check_finite(latent_image["samples"], "input latent")
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                         noise_mask=latent_image.get("noise_mask"), callback=callback,
                                         disable_pbar=True, seed=seed)
    return ({**latent_image, "samples": samples},)
