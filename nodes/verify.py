"""Verify Faces: the identity-leak guard as a node (what it runs: :mod:`.backend.verify`)."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import verify

VERIFY_TOOLTIPS = {
    "original": "The original photos or frames (before anonymization): what Detect & Align Faces was given.",
    "anonymized": "The anonymized photos or frames (e.g. Paste Faces Back's image): same batch and size.",
    "faces": "The faces of Detect & Align Faces: each is compared between original and anonymized at the same "
             "landmarks.",
    "threshold": "Identity distance (dlib ResNet) below which a face is still recognizable: 0.6 is dlib's own "
                 "same-person threshold; higher is stricter.",
    "on_leak": "fail: stop the graph with an error naming the frame, face and distance; redact: blur the leaking "
               "face; report: only record it in the report.",
}


class FaceAnonVerifyFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_VerifyFaces", display_name="FaceAnon Verify Faces (identity-leak guard)",
            category=sockets.CATEGORY_FACES,
            description=("Compares every anonymized face with its original using a face recognizer (dlib ResNet, "
                         "offline; needs the 'verify' extra: pip install -r requirements-verify.txt in ComfyUI's "
                         "Python). A face whose identity distance is below the threshold is still recognizable: "
                         "on_leak=fail stops the graph with an error naming the frame and face, redact blurs it, "
                         "report only records it. The report (JSON) gives distance and verdict per face."),
            inputs=[
                io.Image.Input("original", tooltip=VERIFY_TOOLTIPS["original"]),
                io.Image.Input("anonymized", tooltip=VERIFY_TOOLTIPS["anonymized"]),
                sockets.Faces.Input("faces", tooltip=VERIFY_TOOLTIPS["faces"]),
                io.Float.Input("threshold", default=0.6, min=0.05, max=1.5, step=0.01,
                               tooltip=VERIFY_TOOLTIPS["threshold"]),
                io.Combo.Input("on_leak", options=["fail", "redact", "report"], default="fail",
                               tooltip=VERIFY_TOOLTIPS["on_leak"]),
            ],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, on_leak):
        return sockets.check_choices(cls, on_leak=on_leak)

    @classmethod
    def execute(cls, original, anonymized, faces, threshold, on_leak):
        return io.NodeOutput(*verify.verify_faces(original, anonymized, faces, threshold, on_leak))
