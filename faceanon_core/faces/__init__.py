"""Faces in the wild: detect -> align -> crop -> (process) -> paste back, and redaction.

The diffusion model works on aligned 512x512 face crops. This room finds the faces of a photo
(:mod:`.detect`: MTCNN, or boxes/landmarks from any other detector), warps each face to the crop with a
similarity transform (:mod:`.align`), hands all crops to a caller's function as one float batch
(:mod:`.process`), and pastes the results back with a feathered mask (:mod:`.paste`). Pixels outside
the mask stay bitwise identical to the input, and a face whose processing fails raises
:class:`FaceProcessingError` instead of being passed through: an anonymizer that silently returns a
face leaks it. :mod:`.redact` blurs, pixelates or fills faces (also the fallback for faces too small
for the model). Nothing here imports the diffusion method.

Coordinates are in pixels with pixel centres at integer positions (OpenCV's convention). "Left"
eye/mouth corner means the one on the image's left.
"""

from .align import (
    TEMPLATE_5,
    TEMPLATE_EYE_DIST,
    align_faces,
    estimate_similarity,
    extract_crops,
    resize_crops,
    warp_face_crop,
)
from .detect import (
    DEFAULT_DETECTOR_MIN_FACE,
    FaceDetector,
    MTCNNDetector,
    count_near_limit,
    default_detector,
    faces_from_boxes,
    faces_from_landmarks,
    mtcnn_model_dir,
)
from .paste import DEFAULT_ERODE, DEFAULT_FEATHER, MASK_AXES, MASK_CENTRE_Y, crop_mask, paste_back
from .process import (
    DEFAULT_SMALL_FACES,
    SMALL_FACE_POLICIES,
    FaceLoopOptions,
    apply_small_face_policy,
    check_small_face_policy,
    finish_faces,
    locate_faces,
    prepare_faces,
    process_faces,
    process_faces_batch,
    refuse_small_faces,
    run_crops,
)
from .records import (
    CROP_SIZE,
    DEFAULT_MIN_FACE_SIZE,
    AlignedFace,
    DetectedFace,
    FaceDetectorError,
    FaceProcessingError,
    FacesResult,
    check_rgb,
)
from .redact import DEFAULT_STRENGTH, METHODS, redact_crops, redact_image

__all__ = [
    "AlignedFace",
    "CROP_SIZE",
    "DEFAULT_DETECTOR_MIN_FACE",
    "DEFAULT_ERODE",
    "DEFAULT_FEATHER",
    "DEFAULT_MIN_FACE_SIZE",
    "DEFAULT_SMALL_FACES",
    "SMALL_FACE_POLICIES",
    "apply_small_face_policy",
    "check_small_face_policy",
    "DEFAULT_STRENGTH",
    "DetectedFace",
    "FaceDetector",
    "FaceDetectorError",
    "FaceLoopOptions",
    "FaceProcessingError",
    "FacesResult",
    "MASK_AXES",
    "MASK_CENTRE_Y",
    "METHODS",
    "MTCNNDetector",
    "TEMPLATE_5",
    "TEMPLATE_EYE_DIST",
    "align_faces",
    "check_rgb",
    "count_near_limit",
    "crop_mask",
    "default_detector",
    "estimate_similarity",
    "extract_crops",
    "locate_faces",
    "faces_from_boxes",
    "finish_faces",
    "faces_from_landmarks",
    "mtcnn_model_dir",
    "paste_back",
    "prepare_faces",
    "process_faces",
    "process_faces_batch",
    "redact_crops",
    "refuse_small_faces",
    "redact_image",
    "resize_crops",
    "run_crops",
    "warp_face_crop",
]
