"""All node declarations of the pack, by id."""

from __future__ import annotations

from .builtin_nodes import NODES as BUILTIN_NODES
from .spec import NodeSpec

NODES: tuple[NodeSpec, ...] = BUILTIN_NODES
NODE_BY_ID: dict[str, NodeSpec] = {n.node_id: n for n in NODES}
