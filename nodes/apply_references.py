"""FaceAnon Apply References: the method as a model patch (MODEL + positive/negative CONDITIONING) for ComfyUI's
own samplers, as IPAdapter and core's SAG patch a model."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import patching


class FaceAnonApplyReferences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        t = sockets.REFERENCE_TOOLTIPS
        return io.Schema(
            node_id="FaceAnon_ApplyReferences", display_name="FaceAnon Apply References",
            category=sockets.CATEGORY_METHOD,
            description=("The method as a model patch, for ComfyUI's own samplers: returns the MODEL with the "
                         "dual-reference self-attention (keys/values [own, source, driving] states of each block) "
                         "and the positive [Z'_src, Z_drv] and negative [0, Z_drv] conditioning. Connect them to "
                         "KSampler, KSamplerAdvanced or SamplerCustomAdvanced + CFGGuider (cfg 4 as in the paper); "
                         "use a latent with one image per driving image. Other model patches may come before or "
                         "after it."),
            inputs=[
                *sockets.reference_inputs(),
                sockets.advanced(io.Float.Input, "start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                                 tooltip=t["start_percent"]),
                sockets.advanced(io.Float.Input, "end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                                 tooltip=t["end_percent"]),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, model, source_states, source_embeds, driving_states, driving_embeds, start_percent,
                end_percent):
        patched, positive, negative, _batch, _patch = patching.apply_references(
            model, source_states, source_embeds, driving_states, driving_embeds, start_percent, end_percent)
        return io.NodeOutput(patched, positive, negative)
