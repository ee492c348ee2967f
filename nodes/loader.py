"""FaceAnon Model Loader: a model folder of models/faceanon/ -> MODEL, the two ReferenceNets, VAE, CLIP vision."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import loading

MODEL_FOLDER_TOOLTIP = ("A model folder under models/faceanon/ (or a 'faceanon:' path of extra_model_paths.yaml) "
                        "with unet/, referencenet/, conditioning_referencenet/. Empty list: no weights installed; "
                        f"fetch them from the hub (hf download {loading.HUB_DOWNLOADS[0][0]} ... --local-dir "
                        f"ComfyUI/{loading.FOLDER_LABEL}/{loading.DOWNLOAD_NAME}; the node's error message has every "
                        "command).")


class FaceAnonModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_ModelLoader", display_name="FaceAnon Model Loader",
            category=sockets.CATEGORY_METHOD,
            description=("Loads a FaceAnon model folder from models/faceanon/ (unet/, referencenet/, "
                         "conditioning_referencenet/; optional vae/ and image_encoder/). MODEL is the UNet "
                         "(v-prediction); VAE and CLIP_VISION are empty when the folder lacks them: connect "
                         "ComfyUI's own loaders then."),
            inputs=[io.Combo.Input("model_folder", options=loading.list_model_folders(),
                                   tooltip=MODEL_FOLDER_TOOLTIP)],
            outputs=[io.Model.Output(display_name="model"),
                     sockets.RefNet.Output(display_name="source_refnet"),
                     sockets.RefNet.Output(display_name="driving_refnet"),
                     io.Vae.Output(display_name="vae"), io.ClipVision.Output(display_name="clip_vision")],
        )

    @classmethod
    def validate_inputs(cls, model_folder):
        """Replaces ComfyUI's generic "Value not in list" (an empty list when no weights are installed)."""
        return loading.validate_model_folder(model_folder)

    @classmethod
    def execute(cls, model_folder):
        return io.NodeOutput(*loading.load_model_folder(model_folder))
