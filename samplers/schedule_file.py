"""A searched or optimized sigma schedule as JSON, tied to the model id and step count it was made for."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .validate import check_sigmas


def save_schedule_file(path: str | Path, sigmas: torch.Tensor, file_format: str, model_id: str,
                       **info: object) -> None:
    """Write ``sigmas`` with the format tag, model id and step count (plus ``info``)."""
    sigmas = check_sigmas(torch.as_tensor(sigmas).float().cpu())
    record = {"format": file_format, "model_id": model_id, "steps": len(sigmas) - 1, "sigmas": sigmas.tolist(),
              **info}
    Path(path).write_text(json.dumps(record, indent=1))


def load_schedule_file(path: str | Path, file_format: str, kind: str, model_id: str | None = None,
                       steps: int | None = None) -> torch.Tensor:
    """Read a schedule; ValueError naming the problem if it is not one or belongs to another model / step count."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {kind} from {path}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != file_format:
        raise ValueError(f"{path} is not a {file_format} file")
    if model_id is not None and record.get("model_id") != model_id:
        raise ValueError(f"{path} was made for model {record.get('model_id')!r}, not {model_id!r}")
    if steps is not None and record.get("steps") != steps:
        raise ValueError(f"{path} holds a {record.get('steps')}-step schedule, not {steps} steps")
    sigmas = check_sigmas(torch.tensor(record.get("sigmas"), dtype=torch.float32))
    if len(sigmas) - 1 != record.get("steps"):
        raise ValueError(f"{path}: {len(sigmas)} sigmas do not match steps = {record.get('steps')}")
    return sigmas
