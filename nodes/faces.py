"""Face nodes: Detect & Align Faces, Paste Faces Back, Redact Faces (what they run: :mod:`.backend.faces`)."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import faces as face_ops

DETECT_TOOLTIPS = {
    "image": "The photos or video frames (an IMAGE batch); the faces of all frames come out as one crop batch, in "
             "frame order.",
    "min_face_size": "Faces with fewer pixels between the eyes are too small for the model: they get no crop and "
                     "are blurred by Paste Faces Back (and by Redact Faces given these faces).",
    "if_no_face": "continue: a frame without a face is logged and gives no crop (no face in any frame: one black "
                  "placeholder crop, and Paste Faces Back returns the frames unchanged); error: stop the graph.",
}


PASTE_TOOLTIPS = {
    "image": "The original frames: the same batch Detect & Align Faces was given.",
    "crops": "The processed crops (Face Anonymize, Face Swap or any crop-to-crop node), one per face, in the order "
             "of the faces.",
    "feather": "Softness of the face mask's edge: Gaussian sigma as a fraction of the crop side (0.025 = 10% of "
               "the eye distance).",
    "erode": "How far the face mask ellipse is shrunk, as a fraction of the crop side, before feathering.",
    "color_match": "Match each crop's colours (mean and spread in Lab) to the original face before blending.",
}


REDACT_TOOLTIPS = {
    "image": "The photos or video frames to redact; no diffusion weights needed.",
    "method": "blur, pixelate or solid fill of the whole head: an ellipse around the face box grown by the margin, "
              "opaque inside and feathered only outward.",
    "strength": "0 = the method's default (blur: sigma 0.35 eye distances; pixelate: 8 blocks across the face); "
                "else the blur sigma in eye distances (0.2..5) or the number of pixel blocks across the face "
                "(2..10). Values outside those ranges would leave faces recognizable and are clamped (logged).",
    "faces": "Optional: faces of Detect & Align Faces or Track Faces, redacted as they are (those too small for the "
             "model included) instead of detecting again.",
    "margin": "How far the redacted region reaches past the face box, as a fraction of the box (1.5x that above "
              "for the hair line, 0.75x below). 0.3 covers hair line, ears and chin.",
}


def detector_min_face_input():
    return sockets.advanced(io.Float.Input, "detector_min_face", default=face_ops.DETECTOR_MIN_FACE, min=12.0,
                            max=4096.0, step=1.0, optional=True,
                            tooltip="smallest face the detector looks for (box side in pixels; the CLI's "
                                    "--min-face-size). Faces smaller than this are never found, so never changed: "
                                    "lower it for crowds and distant faces (12 is the detector's own limit)")


class FaceAnonDetectFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sockets.schema(
            node_id="FaceAnon_DetectFaces", display_name="FaceAnon Detect & Align Faces",
            search_aliases=["face detection", "align faces", "crop faces"],
            category=sockets.CATEGORY_FACES,
            description=("Finds faces (MTCNN, 5 landmarks) in every frame and aligns each to an FFHQ-like square "
                         "crop. Returns all crops of all frames as one IMAGE batch (in frame order) and the face "
                         "list for Paste Faces Back. Frames without a face are logged and contribute no crop; with "
                         "no face in any frame, crops is one black placeholder (Face Anonymize passes it on without "
                         "running the model, Paste Faces Back returns the frames unchanged)."),
            inputs=[
                io.Image.Input("image", tooltip=DETECT_TOOLTIPS["image"]),
                sockets.threshold_input(),
                io.Float.Input("min_face_size", default=10.0, min=0.0, max=1000.0, step=1.0,
                               tooltip=DETECT_TOOLTIPS["min_face_size"]),
                sockets.crop_size_input(),
                io.Combo.Input("if_no_face", options=["continue", "error"], default="continue",
                               tooltip=DETECT_TOOLTIPS["if_no_face"]),
                detector_min_face_input(),
            ],
            outputs=[io.Image.Output(display_name="crops"), sockets.Faces.Output(display_name="faces")],
        )

    @classmethod
    def validate_inputs(cls, if_no_face):
        return sockets.check_choices(cls, if_no_face=if_no_face)

    @classmethod
    def execute(cls, image, threshold, min_face_size, crop_size, if_no_face,
                detector_min_face=face_ops.DETECTOR_MIN_FACE):
        return io.NodeOutput(*face_ops.detect_faces(image, threshold, min_face_size, crop_size, if_no_face,
                                                    detector_min_face))


class FaceAnonPasteFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_PasteFaces", display_name="FaceAnon Paste Faces Back",
            category=sockets.CATEGORY_FACES,
            description=("Warps processed crops back into the original frames and blends them with a feathered "
                         "face mask; pixels outside the mask stay exactly as they were. Returns the frames and the "
                         "blend mask."),
            inputs=[
                io.Image.Input("image", tooltip=PASTE_TOOLTIPS["image"]),
                io.Image.Input("crops", tooltip=PASTE_TOOLTIPS["crops"]),
                sockets.Faces.Input("faces", tooltip=sockets.TOOLTIPS["faces_from_detect"]),
                io.Float.Input("feather", default=0.025, min=0.0, max=0.2, step=0.005,
                               tooltip=PASTE_TOOLTIPS["feather"]),
                io.Float.Input("erode", default=0.02, min=0.0, max=0.2, step=0.005, tooltip=PASTE_TOOLTIPS["erode"]),
                io.Boolean.Input("color_match", default=False, tooltip=PASTE_TOOLTIPS["color_match"]),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, image, crops, faces, feather, erode, color_match):
        return io.NodeOutput(*face_ops.paste_faces(image, crops, faces, feather, erode, color_match))


class FaceAnonRedactFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sockets.schema(
            node_id="FaceAnon_RedactFaces", display_name="FaceAnon Redact Faces",
            search_aliases=["blur faces", "pixelate faces", "redact", "censor faces"],
            category=sockets.CATEGORY_FACES,
            description=("Classic redaction of every face (no diffusion weights needed): blur, pixelate or solid "
                         "fill of the whole head (the face box grown by the margin, an ellipse opaque inside and "
                         "feathered outward). strength 0 = the method's "
                         "default (blur: sigma 0.35 eye distances; pixelate: 8 blocks across the face). Optionally "
                         "reuse detected faces."),
            inputs=[
                io.Image.Input("image", tooltip=REDACT_TOOLTIPS["image"]),
                io.Combo.Input("method", options=["blur", "pixelate", "solid"], default="blur",
                               tooltip=REDACT_TOOLTIPS["method"]),
                io.Float.Input("strength", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip=REDACT_TOOLTIPS["strength"]),
                sockets.threshold_input(),
                sockets.Faces.Input("faces", optional=True, tooltip=REDACT_TOOLTIPS["faces"]),
                detector_min_face_input(),
                io.Float.Input("margin", default=0.3, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip=REDACT_TOOLTIPS["margin"]),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, method):
        return sockets.check_choices(cls, method=method)

    @classmethod
    def execute(cls, image, method, strength, threshold, faces=None, detector_min_face=face_ops.DETECTOR_MIN_FACE,
                margin=None):
        return io.NodeOutput(*face_ops.redact_faces(image, method, strength, threshold, faces, detector_min_face,
                                                    margin))
