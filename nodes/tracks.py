"""Track Faces: the faces of video frames as tracks, one per person (what it runs: :mod:`.backend.tracks`)."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import tracks

TRACK_TOOLTIPS = {
    "frames": "The frames of a clip, in order (Get Video Components, or any frame batch).",
    "smoothing": "Smooth the landmarks along each track (zero-phase Savitzky-Golay, 9 frames) so that the aligned "
                 "crops do not jitter.",
}


class FaceAnonTrackFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sockets.schema(
            node_id="FaceAnon_TrackFaces", display_name="FaceAnon Track Faces",
            search_aliases=["video faces", "face tracking"],
            category=sockets.CATEGORY_VIDEO,
            description=("Finds the faces of a batch of video frames and links them into tracks (one per person). "
                         "A frame where the detector missed a tracked face still gets it (interpolated or held), "
                         "landmarks are smoothed along each track. Returns the aligned crops of every tracked face "
                         "(frame order), the faces for Paste Faces Back / Redact Faces (and Face Anonymize: with "
                         "identity per-track, one stable anonymous identity per person), and per crop its track's "
                         "keyframe crop."),
            inputs=[
                io.Image.Input("frames", tooltip=TRACK_TOOLTIPS["frames"]),
                sockets.threshold_input(),
                io.Int.Input("max_gap", default=8, min=0, max=120, tooltip="frames a face may go undetected and keep "
                             "its track; as many are held at a track's ends"),
                io.Boolean.Input("smoothing", default=True, tooltip=TRACK_TOOLTIPS["smoothing"]),
                io.Float.Input("min_face_size", default=10.0, min=0.0, max=1000.0, step=1.0,
                               tooltip="faces with fewer pixels between the eyes are blurred at paste-back instead"),
                sockets.crop_size_input(),
            ],
            outputs=[io.Image.Output(display_name="crops"), sockets.Faces.Output(display_name="faces"),
                     io.Image.Output(display_name="keyframes")],
        )

    @classmethod
    def execute(cls, frames, threshold, max_gap, smoothing, min_face_size, crop_size):
        return io.NodeOutput(*tracks.track_faces_node(frames, threshold, max_gap, smoothing, min_face_size, crop_size))
