"""TurboSample: samplers, schedulers and training-free accelerators for ComfyUI and a Gradio app.

In ComfyUI this folder is a custom node pack (V3 ``comfy_entrypoint``); elsewhere it is the package
``turbosample``. Importing it loads nothing heavy: ComfyUI bindings load only when ComfyUI asks.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the extension that lists this pack's nodes."""
    from .nodes.comfy_bind import TurboSampleExtension

    return TurboSampleExtension()
