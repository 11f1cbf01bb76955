"""All node declarations of the pack, by id."""

from __future__ import annotations

from .attention_nodes import NODES as ATTENTION_NODES
from .autotune_nodes import NODES as AUTOTUNE_NODES
from .ays_nodes import NODES as AYS_NODES
from .builtin_nodes import NODES as BUILTIN_NODES
from .dc_solver_nodes import NODES as DC_SOLVER_NODES
from .dpm_solver_v3_nodes import NODES as DPM_SOLVER_V3_NODES
from .flow_shift_nodes import NODES as FLOW_SHIFT_NODES
from .flowturbo_nodes import NODES as FLOWTURBO_NODES
from .gap_sampler_nodes import NODES as GAP_SAMPLER_NODES
from .gits_nodes import NODES as GITS_NODES
from .loop_accel_nodes import NODES as LOOP_ACCEL_NODES
from .magcache_model_calibrate import NODES as MAGCACHE_MODEL_CALIBRATE_NODES
from .magcache_nodes import NODES as MAGCACHE_NODES
from .ras_nodes import NODES as RAS_NODES
from .schedule_plot import NODES as PLOT_NODES
from .spec import NodeSpec

NODES: tuple[NodeSpec, ...] = (BUILTIN_NODES + RAS_NODES + MAGCACHE_NODES + MAGCACHE_MODEL_CALIBRATE_NODES
                              + LOOP_ACCEL_NODES + PLOT_NODES
                              + ATTENTION_NODES + FLOWTURBO_NODES + FLOW_SHIFT_NODES
                              + GAP_SAMPLER_NODES + GITS_NODES + AYS_NODES + DC_SOLVER_NODES
                              + DPM_SOLVER_V3_NODES + AUTOTUNE_NODES)
NODE_BY_ID: dict[str, NodeSpec] = {n.node_id: n for n in NODES}
