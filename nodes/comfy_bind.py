"""ComfyUI V3 nodes generated from the declarations (imported by ComfyUI only)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .registry import NODES
from .spec import NodeInputError, NodeSpec, Param

SOCKETS = {"MODEL": io.Model, "CONDITIONING": io.Conditioning, "LATENT": io.Latent, "IMAGE": io.Image,
           "SAMPLER": io.Sampler, "SIGMAS": io.Sigmas, "STRING": io.String}


def io_input(p: Param):
    common = {"tooltip": p.tooltip or None}
    if p.type == "INT":
        return io.Int.Input(p.name, default=p.default, min=p.min, max=p.max, step=p.step or 1,
                            control_after_generate=p.seed, **common)
    if p.type == "FLOAT":
        return io.Float.Input(p.name, default=p.default, min=p.min, max=p.max, step=p.step or 0.01, **common)
    if p.type == "STRING":
        return io.String.Input(p.name, default=p.default, multiline=p.multiline, **common)
    if p.type == "BOOLEAN":
        return io.Boolean.Input(p.name, default=p.default, **common)
    if p.type == "COMBO":
        return io.Combo.Input(p.name, options=p.options(), default=p.default, **common)
    return SOCKETS[p.type].Input(p.name, **common)


def make_node_class(spec: NodeSpec) -> type:
    impl = spec.comfy_fn or spec.fn

    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id=spec.node_id, display_name=spec.display_name, category=spec.category,
                         description=spec.description, inputs=[io_input(p) for p in spec.inputs],
                         outputs=[SOCKETS[o.type].Output(display_name=o.name) for o in spec.outputs],
                         is_output_node=spec.output_node)

    def execute(cls, **kwargs) -> io.NodeOutput:
        try:
            values = spec.coerce_inputs(kwargs)
            return io.NodeOutput(*impl(**values))
        except NodeInputError as exc:
            raise ValueError(f"{spec.display_name}: {exc}") from None

    return type(spec.node_id, (io.ComfyNode,), {"define_schema": classmethod(define_schema),
                                                "execute": classmethod(execute), "__module__": __name__})


class TurboSampleExtension(ComfyExtension):
    async def on_load(self) -> None:
        from .comfy_names import register_ksampler_names

        register_ksampler_names()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        await self.on_load()  # ComfyUI releases before on_load support only call get_node_list (idempotent)
        return [make_node_class(spec) for spec in NODES]
