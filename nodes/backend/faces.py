"""What the face nodes run: detect & align, paste back, redact (adapters over :mod:`faceanon_core.faces`), and the
``FACEANON_FACES`` object between them.

``faceanon_core.faces`` imports OpenCV, so it is imported when a node runs, not when ComfyUI starts.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch

from .checks import check_floats
from .images import is_placeholder, placeholder, resize_images

logger = logging.getLogger(__name__)


#: The detector's smallest face (box side in pixels), the default of the CLI's ``--min-face-size``: the library's
#: ``DEFAULT_DETECTOR_MIN_FACE`` (faceanon_core.faces.detect; not imported here: it loads OpenCV, and the schemas need
#: it while ComfyUI starts); tests/repo/test_architecture.py keeps the two equal and this the nodes' only copy.
DETECTOR_MIN_FACE = 20.0


def log_near_limit(node: str, found_per_frame, limit: float) -> int:
    """Log how many detections are close to the detector's smallest face (smaller faces may be missed)."""
    from ...faceanon_core.faces.detect import NEAR_LIMIT_FACTOR, count_near_limit  # the library's one rule

    found = [f for frame in found_per_frame for f in frame]
    near = count_near_limit(found, limit)
    if near:
        logger.warning("FaceAnon %s: %d of %d detection(s) are within %.1fx of the smallest face the detector "
                       "looks for (%.0f px): smaller faces may have been missed; lower detector_min_face to find "
                       "them", node, near, len(found), NEAR_LIMIT_FACTOR, limit)
    else:
        logger.info("FaceAnon %s: %d detection(s), none within %.1fx of the detector's smallest face (%.0f px)",
                    node, len(found), NEAR_LIMIT_FACTOR, limit)
    return near


@dataclass
class FaceSet:
    """``FACEANON_FACES``: the aligned faces of a batch, in the order of the crops.

    Each face records its source frame index, landmarks, affine (image -> crop), crop size and score.
    """

    faces: list = field(default_factory=list)  # faceanon_core.faces.AlignedFace
    frame_sizes: list = field(default_factory=list)  # (height, width) per frame
    crop_size: int = 512
    # Faces too small for the model, (frame index, DetectedFace): Paste Faces Back blurs them so
    # that no face is ever passed through unchanged.
    small: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.faces)

    def _comfy_cache_tensors(self) -> list:
        """For ComfyUI's RAM-pressure output cache: no tensors (landmarks and transforms are a few floats per face;
        the crops travel as their own IMAGE output)."""
        return []


def to_uint8_frames(image: torch.Tensor, what: str = "image") -> list[np.ndarray]:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{what}: expected an IMAGE batch [B,H,W,3], got {tuple(getattr(image, 'shape', ()))}")
    from ...faceanon_core.media.images import from_float

    array = image[..., :3].detach().float().cpu().numpy()
    return [from_float(frame) for frame in array]


def to_image(frames) -> torch.Tensor:
    from ...faceanon_core.media.images import to_float_batch

    return torch.from_numpy(to_float_batch(np.stack(frames)))


@functools.lru_cache(maxsize=4)
def mtcnn(threshold: float, min_face_px: float):
    from ...faceanon_core.faces import MTCNNDetector

    return MTCNNDetector(min_face_size=min_face_px, thresholds=(0.6, 0.7, threshold))


def _detected(face):
    from ...faceanon_core.faces import DetectedFace

    return DetectedFace(box=face.box, score=face.score, landmarks5=face.landmarks)


def detect_faces(image, threshold, min_face_size, crop_size, if_no_face, detector_min_face=DETECTOR_MIN_FACE):
    """Detect & Align Faces: (crops IMAGE, FaceSet); never an empty crop batch (one black placeholder)."""
    from ...faceanon_core.faces import align_faces, extract_crops

    check_floats("Detect & Align Faces", threshold=threshold, min_face_size=min_face_size,
                 detector_min_face=detector_min_face)
    frames = to_uint8_frames(image)
    detector = mtcnn(float(threshold), float(detector_min_face))
    faces, crops, small, all_found = [], [], [], []
    pbar = comfy.utils.ProgressBar(len(frames))
    for index, frame in enumerate(frames):
        found = detector.detect(frame)
        all_found.append(found)
        aligned, skipped = align_faces(found, frame_index=index, crop_size=crop_size,
                                       min_face_size=min_face_size, image_name=f"frame {index}")
        small.extend((index, face) for face in skipped)
        if not found:
            if if_no_face == "error":
                raise ValueError(f"frame {index}: no face found")
            logger.warning("FaceAnon: frame %d: no face found", index)
        if aligned:
            faces.extend(aligned)
            crops.append(extract_crops(frame, aligned))
        pbar.update(1)
    log_near_limit("Detect & Align Faces", all_found, float(detector_min_face))
    if small:
        logger.warning("FaceAnon: %d face(s) too small for the model (below %.0f px between the eyes): Paste "
                       "Faces Back and Redact Faces blur them", len(small), min_face_size)
    result = FaceSet(faces=faces, frame_sizes=[f.shape[:2] for f in frames], crop_size=crop_size, small=small)
    if crops:  # noqa: SIM108 - the else branch carries its reason
        batch = to_image(np.concatenate(crops))
    else:  # never an empty batch: a Preview/Save of the crops would fail on it
        batch = placeholder(torch.zeros((0, crop_size, crop_size, 3)))
    return batch.to(mm.intermediate_device()), result


def check_frames_match(frames, faces: FaceSet) -> None:
    """The frames must be the ones the faces were found in: the same count and the same size each (faces found
    on a resized copy would land in the wrong place and leave the real faces untouched)."""
    if len(frames) != len(faces.frame_sizes):
        raise ValueError(f"the image has a batch of {len(frames)} but the faces were detected in "
                         f"{len(faces.frame_sizes)} frames")
    for index, (frame, size) in enumerate(zip(frames, faces.frame_sizes, strict=True)):
        if tuple(frame.shape[:2]) != tuple(size):
            raise ValueError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the faces were detected "
                             f"on a {size[1]}x{size[0]} frame: connect the same image the faces came from")


def paste_faces(image, crops, faces, feather, erode, color_match):
    """Paste Faces Back: (frames IMAGE, mask MASK); faces too small for the model are blurred."""
    from ...faceanon_core.faces import paste_back

    check_floats("Paste Faces Back", feather=feather, erode=erode)
    if not isinstance(faces, FaceSet):
        raise ValueError("faces must come from the FaceAnon Detect & Align Faces node")
    frames = to_uint8_frames(image)
    check_frames_match(frames, faces)
    if not len(faces) and is_placeholder(crops):
        crops = crops[:0]  # no face in any frame: the frames come back as they are (small faces blurred)
    if crops.shape[0] != len(faces):
        raise ValueError(f"got {crops.shape[0]} processed crops for {len(faces)} detected faces")
    if len(faces) and not torch.isfinite(crops).all():
        raise ValueError("the processed crops hold NaN or infinite values; nothing was pasted")
    if len(faces) and tuple(crops.shape[1:3]) != (faces.crop_size, faces.crop_size):
        logger.info("FaceAnon: resizing crops from %dx%d to %d", crops.shape[2], crops.shape[1], faces.crop_size)
        crops = resize_images(crops, faces.crop_size, faces.crop_size)
    crops_np = crops[..., :3].detach().float().clamp(0, 1).cpu().numpy() if len(faces) else None
    out, masks = [], []
    for index, frame in enumerate(frames):
        picks = [i for i, f in enumerate(faces.faces) if f.frame_index == index]
        if picks:
            frame, mask = paste_back(frame, [faces.faces[i] for i in picks], crops_np[picks], erode=erode,
                                     feather=feather, color_match=color_match)
        else:
            mask = np.zeros(frame.shape[:2], np.float32)
        frame, mask = _blur_small_faces(frame, mask, [f for i, f in faces.small if i == index], index)
        out.append(frame)
        masks.append(mask)
    return to_image(out), torch.from_numpy(np.stack(masks))


def _blur_small_faces(frame, mask, small, index):
    """Faces too small for the model are blurred (never passed through unchanged)."""
    if not small:
        return frame, mask
    from ...faceanon_core.faces.redact import redact_image

    logger.warning("FaceAnon: frame %d: %d face(s) too small for the model were blurred", index, len(small))
    redacted = redact_image(frame, "blur", faces=small, image_name=f"frame {index}")
    return redacted.image, np.maximum(mask, redacted.mask)


def _allowed_strength(method, strength):
    """None (the default) for 0, else ``strength`` clamped into the method's allowed range (logged).

    The node's input keeps its old range so saved workflows still load; a value that would leave faces
    recognizable (a weak blur, too many pixelate blocks) is raised to the floor here, with a warning.
    """
    from ...faceanon_core.faces import redact as r

    if strength <= 0 or method == "solid":
        return None
    lo, hi = {"blur": (r.MIN_BLUR_STRENGTH, r.MAX_BLUR_STRENGTH),
              "pixelate": (r.MIN_PIXELATE_BLOCKS, r.MAX_PIXELATE_BLOCKS)}[method]
    clamped = min(max(float(strength), lo), hi)
    if clamped != strength:
        logger.warning("FaceAnon Redact Faces: %s strength %g is outside %g..%g (faces would stay recognizable "
                       "or nothing changes); using %g", method, strength, lo, hi, clamped)
    return clamped


def redact_faces(image, method, strength, threshold, faces=None, detector_min_face=DETECTOR_MIN_FACE,
                 margin=None):
    """Redact Faces: (frames IMAGE, mask MASK); with ``faces``, those (the small ones included), else detected."""
    from ...faceanon_core.faces.redact import DEFAULT_MARGIN, redact_image

    margin = DEFAULT_MARGIN if margin is None else margin
    check_floats("Redact Faces", strength=strength, threshold=threshold, detector_min_face=detector_min_face,
                 margin=margin)
    strength = _allowed_strength(method, strength)
    frames = to_uint8_frames(image)
    if faces is not None and not isinstance(faces, FaceSet):
        raise ValueError("faces must come from the FaceAnon Detect & Align Faces node")
    if faces is not None:
        check_frames_match(frames, faces)
    detector = None if faces is not None else mtcnn(float(threshold), float(detector_min_face))
    out, masks, found = [], [], []
    pbar = comfy.utils.ProgressBar(len(frames))
    for index, frame in enumerate(frames):
        given = None
        if faces is not None:
            # every face Detect found, those it set aside as too small for the model included
            given = [_detected(f) for f in faces.faces if f.frame_index == index]
            given += [f for i, f in faces.small if i == index]
        else:
            given = detector.detect(frame)
            found.append(given)
        result = redact_image(frame, method, strength, faces=given, margin=float(margin),
                              image_name=f"frame {index}")
        out.append(result.image)
        masks.append(result.mask)
        pbar.update(1)
    if faces is None:
        log_near_limit("Redact Faces", found, float(detector_min_face))
    return to_image(out), torch.from_numpy(np.stack(masks))
