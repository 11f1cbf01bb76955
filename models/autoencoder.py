"""The small convolutional autoencoder whose latents the built-in model samples (``models/ae_f8c8.safetensors``).

``encode`` maps (B, 3, H, W) images in [-1, 1] to (B, C, H/f, W/f) latents scaled to unit standard deviation over
the training set (``latent_scale``, measured after training, as latent diffusion models do); ``decode`` maps them
back. Plain autoencoder (no KL term): latent noise during training keeps the decoder tolerant of the small errors
a diffusion model makes. Weights in safetensors with the config and training record in the metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

AE_ID = "turbosample-emoji-autoencoder-v1"


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = 8
    downsample: int = 8  # a power of two: 64 px images -> 8x8 latents
    channels: int = 64
    latent_scale: float = 1.0  # latents are divided by this (their std over the training set)

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def levels(downsample: int) -> int:
    n = downsample.bit_length() - 1
    if downsample < 2 or 1 << n != downsample:
        raise ValueError(f"autoencoder downsample must be a power of two >= 2, got {downsample}")
    return n


class Autoencoder(nn.Module):
    """conv -> (ResBlock, stride-2 conv) x log2(f) -> latent conv; the decoder mirrors it with nearest upsampling.
    Widths grow from ``channels / 4`` at full resolution to ``channels`` two levels down (cheap at 64 px)."""

    def __init__(self, config: AutoencoderConfig | None = None, **overrides):
        super().__init__()
        cfg = config or AutoencoderConfig(**overrides)
        self.config = cfg
        n = levels(cfg.downsample)
        width = [cfg.channels >> max(0, 2 - i) for i in range(n + 1)]  # index = level, 0 = full resolution
        enc: list[nn.Module] = [nn.Conv2d(3, width[0], 3, padding=1)]
        for i in range(n):
            enc += [ResBlock(width[i]), nn.Conv2d(width[i], width[i + 1], 4, stride=2, padding=1)]
        enc += [ResBlock(width[n]), nn.GroupNorm(8, width[n]), nn.SiLU(),
                nn.Conv2d(width[n], cfg.latent_channels, 3, padding=1)]
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, width[n], 3, padding=1), ResBlock(width[n])]
        for i in reversed(range(n)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width[i + 1], width[i], 3, padding=1),
                    ResBlock(width[i])]
        dec += [nn.GroupNorm(8, width[0]), nn.SiLU(), nn.Conv2d(width[0], 3, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def check_size(self, height: int, width: int) -> None:
        f = self.config.downsample
        if height % f or width % f or height < f or width < f:
            raise ValueError(f"the autoencoder needs height and width that are positive multiples of {f}, "
                             f"got {width}x{height}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) unit-scale latents."""
        self.check_size(images.shape[-2], images.shape[-1])
        return self.encoder(images) / self.config.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-scale latents -> (B, 3, H, W) images (not clamped)."""
        return self.decoder(latents * self.config.latent_scale)


@torch.no_grad()
def encode_all(model: Autoencoder, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``model.encode`` over a large set, in batches."""
    return torch.cat([model.encode(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_all(model: Autoencoder, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``model.decode`` over a large set, in batches, clamped to [-1, 1]."""
    return torch.cat([model.decode(latents[i:i + batch]) for i in range(0, len(latents), batch)]).clamp(-1, 1)


@torch.no_grad()
def rgb_factors(model: Autoencoder, samples: int = 64, side: int = 8, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear latent-cell -> RGB map for cheap step previews (ComfyUI's ``latent_rgb_factors`` (C, 3) and bias
    (3,)): the least-squares fit of the mean colour each cell decodes to, over seeded unit-normal latents."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(samples, model.config.latent_channels, side, side, generator=gen)
    cells = nn.functional.avg_pool2d(model.decode(latents).clamp(-1, 1), model.config.downsample)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), cells.permute(0, 2, 3, 1).reshape(-1, 3))
    return solution.solution[:-1], solution.solution[-1]


def save_autoencoder(model: Autoencoder, path: Path, info: dict) -> None:
    from safetensors.torch import save_file

    meta = {"turbosample.model_id": AE_ID, "turbosample.config": json.dumps(model.config.to_dict()),
            "turbosample.info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata=meta)
    tmp.replace(path)


def load_autoencoder(path: str | Path) -> Autoencoder:
    """An autoencoder in eval mode; ValueError for a file that is not one."""
    from safetensors.torch import load_file

    from .metadata import read_metadata

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"autoencoder weights not found at {path}")
    meta = read_metadata(path)
    if meta.get("turbosample.model_id") != AE_ID:
        raise ValueError(f"{path} is not a {AE_ID} checkpoint (model id: {meta.get('turbosample.model_id')!r})")
    model = Autoencoder(AutoencoderConfig(**json.loads(meta["turbosample.config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
