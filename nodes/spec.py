"""Node declarations written once; ComfyUI, Gradio and the CLI are generated from them."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class NodeInputError(ValueError):
    """A node input is missing, of the wrong type or out of range."""


def exact_int(value: Any) -> int:
    """An integer input without a detour through float (seeds go up to 2**64 - 1); ValueError if not whole."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text, 10)
        except ValueError:
            value = float(text)  # "5.0", "1e3"
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return operator.index(value)  # int, numpy integers; TypeError for anything else


@dataclass(frozen=True)
class Param:
    """One node input: a widget (INT/FLOAT/STRING/BOOLEAN/COMBO) or a socket (MODEL, LATENT, ...)."""

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: Callable[[], list[str]] | None = None
    tooltip: str = ""
    multiline: bool = False
    seed: bool = False  # ComfyUI's control_after_generate widget follows it
    label: str = ""

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def options(self) -> list[str]:
        return list(self.choices()) if self.choices else []

    def coerce(self, value: Any, node_id: str = "", where: str = "") -> Any:
        """The value converted to this input's type, or NodeInputError naming input and limits."""
        where = where or (f"{node_id}.{self.name}" if node_id else self.name)
        try:
            if self.type == "INT":
                value = exact_int(value)
            elif self.type == "FLOAT":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not math.isfinite(value):
                    raise NodeInputError(f"{where} must be a finite number, got {value}")
            elif self.type == "STRING":
                if not isinstance(value, str):
                    raise ValueError
            elif self.type == "BOOLEAN":
                if not isinstance(value, bool):
                    raise ValueError
        except (TypeError, ValueError) as exc:
            if isinstance(exc, NodeInputError):
                raise
            raise NodeInputError(f"{where} must be of type {self.type}, got {value!r}") from None
        if self.type == "COMBO" and value not in self.options():
            raise NodeInputError(f"{where}: unknown value {value!r}; choose one of {', '.join(self.options())}")
        if self.min is not None and value < self.min:
            raise NodeInputError(f"{where} must be >= {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise NodeInputError(f"{where} must be <= {self.max}, got {value}")
        if self.type == "INT" and self.step and self.min is not None and (value - self.min) % self.step:
            raise NodeInputError(f"{where} must be {self.min} plus a multiple of {self.step}, got {value}")
        return value


@dataclass(frozen=True)
class Output:
    name: str
    type: str


@dataclass(frozen=True)
class NodeSpec:
    """A node: identity, inputs, outputs and the pure function computing outputs from inputs."""

    node_id: str
    display_name: str
    category: str
    description: str
    inputs: tuple[Param, ...]
    outputs: tuple[Output, ...]
    fn: Callable[..., tuple]
    comfy_fn: Callable[..., tuple] | None = None  # ComfyUI-side implementation where it must differ
    output_node: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def widgets(self) -> tuple[Param, ...]:
        return tuple(p for p in self.inputs if p.is_widget)

    @property
    def sockets(self) -> tuple[Param, ...]:
        return tuple(p for p in self.inputs if not p.is_widget)

    def param(self, name: str) -> Param:
        for p in self.inputs:
            if p.name == name:
                return p
        raise KeyError(f"{self.node_id} has no input {name!r}")

    def coerce_inputs(self, values: dict) -> dict:
        missing = [p.name for p in self.inputs if p.name not in values]
        if missing:
            raise NodeInputError(f"{self.node_id} is missing input(s): {', '.join(missing)}")
        return {p.name: p.coerce(values[p.name], self.node_id) if p.is_widget else values[p.name]
                for p in self.inputs}

    def run(self, **values: Any) -> tuple:
        return self.fn(**self.coerce_inputs(values))

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.widgets}
