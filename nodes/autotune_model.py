"""What the AutoTune node needs of the built-in model without the app's settings graph: the shipped MagCache
calibration when it fits the weights, and the latent as an image (``nodes.autotune`` adds the settings)."""

from __future__ import annotations


def builtin_calibration(model) -> tuple[object | None, str]:
    """The shipped MagCache calibration the app's workflow uses, when it belongs to these weights; else None and
    why (then the tuner records one on the model, and a saved workflow would still name the shipped one)."""
    from ..accel.magcache_calibration import CalibrationMismatch, check_model, weights_fingerprint
    from .magcache_nodes import resolve_calibration

    cal = resolve_calibration("builtin")
    try:
        check_model(cal, weights_fingerprint(model.diffusion_model))
    except CalibrationMismatch as exc:
        return None, f"the shipped MagCache calibration does not fit these weights ({exc})"
    return cal, ""


def builtin_image(latent):
    """The built-in model's latent (first image), decoded, as an (H, W, 3) array in [0, 1]."""
    from .builtin_nodes import latent_to_image

    return latent_to_image(latent[:1])[0].numpy()


def is_builtin_latent(latent) -> bool:
    """Whether ``latent`` is shaped like the built-in weights' latents (so its images can be decoded)."""
    from ..models.builtin import latent_space

    return latent.ndim == 4 and latent.shape[1] == latent_space().channels
