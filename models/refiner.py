"""FlowTurbo's velocity refiner: one DiT block predicting the velocity correction from [x_t, previous velocity].

Built from ``models/dit.py`` pieces (patch embedding, one ``DiTBlock`` with adaLN-Zero sigma conditioning,
``FinalLayer`` head). Input = channel concat of x_t and the velocity passed on by the previous sampler step
(16 channels for the built-in model's 8-channel latents); output = delta v, so
``v_new = v_prev + refiner(x_t, sigma, v_prev)``
(the official ``VelocityRefinerBlock`` output is also an offset added to v). Unlike the official refiner it takes
no text/class conditioning: the guided previous velocity already carries the prompt and the guidance, so the
sampler needs neither the conditioning nor a second (CFG) batch half for it.

The safetensors file records the base model it was distilled from (model id and weights fingerprint);
:func:`load_refiner` refuses a refiner trained for another model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..samplers.fingerprint import weights_fingerprint
from .dit import DiTBlock, FinalLayer, grid_position_embedding, timestep_features

REFINER_ID = "turbosample-flowturbo-refiner-v1"
BUILTIN_REFINER = Path(__file__).with_name("builtin_refiner.safetensors")


@dataclass(frozen=True)
class RefinerConfig:
    channels: int = 3  # image/latent channels; the input has 2x this
    patch_size: int = 4
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0
    base_grid: int = 8


class VelocityRefiner(nn.Module):
    """``forward(x, sigma, v_prev) -> delta v``; sigma is (B,) in [0, 1] (timestep = 1000 sigma, as the base)."""

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        cfg = config or RefinerConfig()
        self.config = cfg
        self.patch_embed = nn.Conv2d(2 * cfg.channels, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.block = DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio)
        self.final = FinalLayer(cfg.width, cfg.patch_size ** 2 * cfg.channels)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.block.ada, self.final.ada, self.final.linear):  # adaLN-Zero: starts as delta v = 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.shape[1] != cfg.channels or v_prev.shape != x.shape:
            raise ValueError(f"refiner expects x and v_prev of shape (B, {cfg.channels}, H, W), "
                             f"got {tuple(x.shape)} and {tuple(v_prev.shape)}")
        tokens = self.patch_embed(torch.cat([x, v_prev], dim=1))
        rows, cols = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = tokens + grid_position_embedding(rows, cols, cfg.width, cfg.base_grid).to(tokens)
        t = (sigma.reshape(-1) * 1000).to(tokens.dtype).expand(x.shape[0])
        c = self.time_mlp(timestep_features(t, cfg.width).to(tokens))
        out = self.final(self.block(tokens, c), c)
        p = cfg.patch_size
        out = out.reshape(-1, rows, cols, cfg.channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(x.shape)


def base_network(model: object) -> nn.Module:
    """The raw network of our DiffusionModel, a ComfyUI ModelPatcher or a bare module."""
    if hasattr(model, "diffusion_model"):  # turbosample DiffusionModel / comfy BaseModel
        return model.diffusion_model
    if hasattr(model, "model") and hasattr(model.model, "diffusion_model"):  # comfy ModelPatcher
        return model.model.diffusion_model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"{type(model).__name__} is not a diffusion model (no diffusion_model network)")


def base_identity(model: object) -> tuple[str, str]:
    """(model id, weights fingerprint) a refiner for ``model`` is recorded with."""
    net = base_network(model)
    name = getattr(model, "name", None) or type(net).__name__
    return str(name), weights_fingerprint(net)


def save_refiner(refiner: VelocityRefiner, path: Path, base_model: object, info: dict) -> None:
    from safetensors.torch import save_file

    model_id, fingerprint = base_identity(base_model)
    meta = {"turbosample.refiner_id": REFINER_ID, "turbosample.config": json.dumps(asdict(refiner.config)),
            "turbosample.base_model_id": model_id, "turbosample.base_fingerprint": fingerprint,
            "turbosample.info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in refiner.state_dict().items()}, str(path), metadata=meta)


def resolve_path(name: str | Path) -> Path:
    """'builtin' -> the shipped refiner; anything else is a file path."""
    return BUILTIN_REFINER if str(name).strip() == "builtin" else Path(str(name).strip()).expanduser()


def load_refiner(path: str | Path, model: object) -> VelocityRefiner:
    """The refiner at ``path`` (or 'builtin') in eval mode; ValueError if corrupt or trained for another model."""
    from safetensors import safe_open

    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FlowTurbo refiner not found at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("turbosample.refiner_id") != REFINER_ID:
        raise ValueError(f"{path} is not a FlowTurbo refiner (id {meta.get('turbosample.refiner_id')!r}, "
                         f"expected {REFINER_ID!r})")
    model_id, fingerprint = base_identity(model)
    want_id, want_fp = meta.get("turbosample.base_model_id"), meta.get("turbosample.base_fingerprint")
    if fingerprint != want_fp:
        raise ValueError(f"{path} was trained for base model {want_id!r} (weights {want_fp}), not for this model "
                         f"{model_id!r} (weights {fingerprint}); train a refiner for it with "
                         "python -m turbosample.models.train_refiner")
    try:
        refiner = VelocityRefiner(RefinerConfig(**json.loads(meta["turbosample.config"])))
        refiner.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: refiner weights do not match its recorded config: {exc}") from exc
    return refiner.eval().requires_grad_(False)
