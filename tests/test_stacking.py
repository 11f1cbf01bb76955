"""Accelerators that cannot share a model are refused before anything is patched, in every front end."""

import pytest
from test_accel_adapter import small_dit

from turbosample.accel.magcache import MagCacheSettings, magcache_model
from turbosample.accel.ras import apply_ras
from turbosample.accel.stacking import StackingError
from turbosample.nodes.txt2img import Settings, to_api_prompt
from turbosample.nodes.workflow import WorkflowError
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling


def magcache_settings() -> MagCacheSettings:
    return MagCacheSettings({0: (1.0,) * 4}, 0.1, 2, 0.2)


def test_magcache_then_ras_and_ras_then_magcache_are_refused():
    base = DiffusionModel(small_dit(), FlowSampling())
    with pytest.raises(StackingError, match="RAS cannot be stacked with MagCache"):
        apply_ras(magcache_model(base, magcache_settings()), sample_ratio=0.5)
    ras = apply_ras(base, sample_ratio=0.5)
    with pytest.raises(StackingError, match="MagCache cannot be stacked with RAS"):
        magcache_model(ras, magcache_settings())
    assert base.wrappers == () and len(ras.wrappers) == 1  # nothing half-applied


def test_app_graph_refuses_the_pair_but_takes_each_alone():
    with pytest.raises(WorkflowError, match="cannot be stacked"):
        to_api_prompt(Settings(magcache_threshold=0.1, ras_ratio=0.5))
    for settings in (Settings(magcache_threshold=0.1), Settings(ras_ratio=0.5)):
        types = {n["class_type"] for n in to_api_prompt(settings).values()}
        assert ("TurboSampleMagCache" in types) != ("TurboSampleRAS" in types)
