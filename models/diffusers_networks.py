"""diffusers denoisers behind the ComfyUI-style ``forward(x, timestep, context)`` that our DiffusionModel calls.

``accel.diffusers_adapters.DiffusersDiT`` covers the SD3 / Flux / Wan transformers; this module adds the two
networks a pipeline folder may hold that are not one transformer:

* ``DiffusersUNet``: SD1.x / SD2.x / SDXL ``UNet2DConditionModel``. ``timestep`` is the discrete DDPM step
  (``DiscreteSampling.timestep``); ``context`` is the text tensor or a mapping with ``encoder_hidden_states`` and,
  for SDXL, ``pooled_projections`` (its ``text_embeds``). SDXL's size conditioning ``time_ids`` is made from the
  latent's own size, as the pipeline does by default (original = target = the image size, no crop), so a stage
  of Bottleneck Sampling at another size is conditioned on that size.
* ``WanExperts``: Wan 2.2 A14B's two transformers; ``transformer`` denoises timesteps at or above
  ``boundary_ratio * 1000`` (high noise), ``transformer_2`` the rest, as ``WanPipeline`` switches them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..accel.diffusers_adapters import Context, DiffusersDiT, context_tensor


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet2DConditionModel (EPS or v-prediction) with the ComfyUI call convention."""

    def __init__(self, unet: torch.nn.Module, vae_factor: int = 8):
        super().__init__()
        self.unet = unet
        self.vae_factor = int(vae_factor)

    @property
    def size_factor(self) -> int:
        """Latent sides must divide by 2 ** (number of down-sampling blocks)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def text_time(self) -> bool:
        return self.unet.config.addition_embed_type == "text_time"

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Context = None, **_: object) -> torch.Tensor:
        text = context_tensor(context, "encoder_hidden_states", "UNet")
        added = None
        if self.text_time:
            pooled = context_tensor(context, "pooled_projections", "SDXL UNet")
            height, width = (side * self.vae_factor for side in x.shape[-2:])
            time_ids = torch.tensor([height, width, 0, 0, height, width], device=x.device, dtype=text.dtype)
            added = {"text_embeds": pooled, "time_ids": time_ids.expand(x.shape[0], 6)}
        t = torch.as_tensor(timestep, device=x.device)
        t = t.reshape(1).expand(x.shape[0]) if t.numel() == 1 else t
        return self.unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False)[0]


def rows_of(context: Context, mask: torch.Tensor) -> Context:
    """The batch rows ``mask`` of a tensor or mapping context (one-row entries are kept whole)."""
    if isinstance(context, Mapping):
        return {k: rows_of(v, mask) for k, v in context.items()}
    if isinstance(context, torch.Tensor) and context.ndim and context.shape[0] == mask.shape[0]:
        return context[mask]
    return context


class WanExperts(torch.nn.Module):
    """Wan 2.2's high-noise and low-noise transformers, switched at ``boundary`` (a timestep, sigma * 1000)."""

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary_ratio: float):
        super().__init__()
        self.high, self.low = DiffusersDiT(high), DiffusersDiT(low)
        self.boundary = float(boundary_ratio) * 1000.0

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Context = None, **_: object) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        high = t >= self.boundary
        if bool(high.all()):
            return self.high(x, t, context)
        if not bool(high.any()):
            return self.low(x, t, context)
        out = torch.empty_like(x)
        for mask, expert in ((high, self.high), (~high, self.low)):
            out[mask] = expert(x[mask], t[mask], rows_of(context, mask)).to(out.dtype)
        return out
