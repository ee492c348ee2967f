"""``faceanon anonymize`` (photos, folders, aligned crops) and ``faceanon swap``: the diffusion model.

Detect -> align each face to a 512 crop -> the model on all crops of a photo as one
batch (chunked to ``--batch-size``) -> paste back with a feathered mask.  Folders are
processed resumably through a JSON-lines manifest; a face that cannot be processed is
an error for its photo (fail closed), a photo without faces is copied unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..faces import FacesResult, process_faces
from ..faces.align import resize_crops
from ..faces.detect import count_near_limit
from ..media.images import ImageReadError, load_image, save_image
from ..media.manifest import run_batch
from .errors import EXIT_CODES_EPILOG, EXIT_FAILED, CliError
from .loading import (
    generators,
    load_pipeline,
    model_identity,
    models_dir,
    require_diffusion,
    require_models,
    verification,
)
from .options import (
    HelpFormatter,
    add_detector_args,
    add_model_options,
    add_run_options,
    detector_from_args,
    float_at_least,
    int_at_least,
    loop_options,
)
from .runs import (
    folder_run,
    params_of,
    plan_crops,
    plan_run,
    precheck_inputs,
    refuse_unusable,
    refuse_videos_on_ray,
    report_near_limit,
    report_not_handled,
    video_params_of,
)
from .video import add_video_options, only_videos, run_anonymize_video

logger = logging.getLogger(__name__)

MANIFEST_NAME = "faceanon-manifest.jsonl"


def crop_anonymizer(pipe, args):
    """``anonymize(crops, seed, degree)`` for the leak guard: float crops in, anonymized crops out.

    Every face of a call gets the same seed, so a face keeps its anonymous identity from frame
    to frame of a clip (same seed, same degree).
    """
    import torch

    def anonymize(crops: np.ndarray, seed: int, degree: float) -> np.ndarray:
        model_in = resize_crops(crops, args.size)
        out = pipe.anonymize(
            torch.from_numpy(np.ascontiguousarray(model_in)).permute(0, 3, 1, 2),
            degree=degree, guidance_scale=args.guidance, num_inference_steps=args.steps,
            generator=generators(seed, len(crops)),
            height=args.size, width=args.size, output_type="np",
        ).images
        return np.clip(resize_crops(np.asarray(out), crops.shape[1]), 0.0, 1.0)

    return anonymize


def crop_processor(pipe, args):
    """``process_crops`` for :func:`process_faces`: ``--seed`` and ``--degree`` for every face."""
    anonymize = crop_anonymizer(pipe, args)
    return lambda crops: anonymize(crops, args.seed, args.degree)


def guard_config(args):
    """The leak guard's settings of ``--verify-threshold/-retries/-fallback``."""
    from ..privacy.guard import GuardConfig

    return GuardConfig(threshold=args.verify_threshold, retries=args.verify_retries, fallback=args.verify_fallback)


def anonymize_faces(rgb: np.ndarray, found, args, pipe, recognizer=None, *, name: str) -> FacesResult:
    """One photo's detected faces through the model, pasted back, small faces as ``--small-faces`` says; with a
    ``recognizer``, through the leak guard instead. The single process and the Ray model actors call this."""
    if recognizer is None:
        return process_faces(rgb, crop_processor(pipe, args), faces=found, image_name=name,
                             options=loop_options(args))
    from ..privacy.guard import guarded_process_faces

    return guarded_process_faces(rgb, crop_anonymizer(pipe, args), recognizer, seed=args.seed, degree=args.degree,
                                 config=guard_config(args), faces=found, image_name=name,
                                 options=loop_options(args))


def save_anonymized(dst: Path, image, result: FacesResult, args, near: int, *, overwrite: bool) -> dict[str, Any]:
    """Write one anonymized photo (metadata as ``--keep-metadata`` says) and return its manifest record; the
    single process writes ``dst``, a Ray worker its staging file."""
    save_image(dst, result.image, image.alpha, overwrite=overwrite, strip_metadata=not args.keep_metadata,
               icc_profile=image.icc_profile, exif=image.exif if args.keep_metadata else None)
    info = {"faces": len(result.faces), "small_faces": len(result.skipped),
            "small_faces_policy": args.small_faces, "faces_near_min_size": near}
    checks = getattr(result, "checks", None)  # the leak guard's, one per face
    if checks is not None:
        info["identity"] = [c.to_dict() for c in checks]
    return info


def run_anonymize_photos(args) -> int:
    """Plan, check every input, lock the folder -- all before the model loads (minutes on a CPU)."""
    run = plan_run(args.inputs, args.output, args.ext, recursive=args.recursive, overwrite=args.overwrite,
                   command="anonymize", videos=True)
    refuse_videos_on_ray(run, args, "anonymize")
    plan = run.plan
    detector = detector_from_args(args)
    manifest_path = args.manifest or (Path(args.output) / MANIFEST_NAME
                                      if run.folder is not None and len(plan) > 1 else None)
    folder = models_dir(args)
    params = {"command": "anonymize", "degree": args.degree, "guidance": args.guidance, "steps": args.steps,
              "seed": args.seed, "size": args.size, "scheduler": args.scheduler,
              "min_face_size": args.min_face_size, "min_model_face": args.min_model_face,
              "threshold": args.threshold, "small_faces": args.small_faces, "keep_metadata": args.keep_metadata,
              "model": model_identity(folder) if (folder / "unet").is_dir() else {"folder": str(folder)}}
    recognizer = verification(args)
    params["verify"] = None
    if recognizer is not None:
        params["verify"] = {"recognizer": recognizer.name, "threshold": guard_config(args).threshold_for(recognizer),
                            "retries": args.verify_retries, "fallback": args.verify_fallback}
    video_params = video_params_of(params, args)
    with folder_run(run, manifest_path, params, overwrite=args.overwrite, wait=args.wait,
                    command="anonymize", video_params=video_params) as manifest:
        return _anonymize_locked(args, run, manifest, manifest_path, params, video_params, detector, recognizer)


def _anonymize_locked(args, run, manifest, manifest_path, params, video_params, detector, recognizer) -> int:
    from ..media.plans import is_video
    from .video import anonymize_video, video_tracks

    plan = run.plan
    params_for = params_of(params, video_params)
    todo = [(item, out) for item, out in plan
            if not (manifest and manifest.is_done(item.path, out, params_for(item.path)))]
    if not todo:
        print(f"anonymize: all {len(plan)} input(s) already done (manifest {manifest_path})", file=sys.stderr)
        report_not_handled(run, "anonymize")
        return 0
    problems = precheck_inputs(todo, args.overwrite)
    for path, message in problems.items():
        print(f"faceanon anonymize: error: {message}" if path in message
              else f"faceanon anonymize: error: {path}: {message}", file=sys.stderr)
    refuse_unusable(todo, problems, args.stop_on_error, manifest, params, "the model was not loaded")
    runner = getattr(args, "batch_runner", None) or run_batch  # --ray: cli.ray_runs (its actors load the model)
    pipe = load_pipeline(args) if runner is run_batch else None
    if pipe is not None:  # the sampling steps of each photo (minutes on a CPU): a bar of its own
        pipe.set_progress_bar_config(desc="sampling", unit="step", leave=False, disable=getattr(args, "quiet", False))

    rel_of = {item.path: item.rel for item, _ in plan}

    def process(src: Path, dst: Path) -> dict[str, Any]:
        if str(src) in problems:
            raise ValueError(problems[str(src)])
        if is_video(src):  # the single-video path: tracks, one identity per track, audio kept, atomic
            from ..media.video import probe_video

            info = probe_video(src)
            tracks = video_tracks(info, detector, max_gap=args.max_gap, smoothing=not args.no_smoothing)
            return anonymize_video(info, dst, args, tracks, pipe, recognizer, rel=rel_of[src])
        image = load_image(src)
        found = detector.detect(image.rgb)
        result = anonymize_faces(image.rgb, found, args, pipe, recognizer, name=str(src))
        info = save_anonymized(dst, image, result, args, count_near_limit(found, args.min_face_size),
                               overwrite=args.overwrite)
        logger.info("%s: %d face(s) anonymized -> %s", src, len(result.faces), dst)
        return info

    from tqdm import tqdm

    kw = {"params_of": params_for} if runner is run_batch else {}  # --ray: photos only (videos refused)
    with tqdm(total=len(plan), unit="input", disable=len(plan) < 2) as bar:
        summary = runner(plan, process, manifest=manifest, params=params, seed=args.seed,
                         stop_on_error=args.stop_on_error, progress=lambda n, total, path: bar.update(1), **kw)
    print(f"anonymize: {summary.done} written, {summary.skipped} already done, {summary.failed} failed",
          file=sys.stderr)
    report_not_handled(run, "anonymize")
    report_near_limit(summary, args.min_face_size, "anonymize")
    for path, message in summary.errors:
        if path in problems:
            continue  # reported before the model loaded
        print(f"faceanon anonymize: error: {path}: {message}", file=sys.stderr)
    return 0 if summary.ok else EXIT_FAILED


__all__ = ["run_anonymize_photos", "anonymize_faces", "crop_anonymizer", "crop_processor", "save_anonymized"]


def register(sub: argparse._SubParsersAction) -> None:
    anon = sub.add_parser("anonymize", help="replace each face with an anonymous one (diffusion model)",
                          description="Replace every face of photos, folders or videos with an anonymous one "
                                      "(the diffusion model; needs the 'diffusion' extra and the model weights). "
                                      "Writes new files; never touches the inputs.",
                          epilog=EXIT_CODES_EPILOG, formatter_class=HelpFormatter)
    anon.add_argument("inputs", nargs="+", help="photos, videos and/or folders of them (a folder's videos are "
                                                "anonymized too)")
    anon.add_argument("--degree", type=float_at_least(0.0), default=1.25,
                      help="anonymization degree d >= 0: 0 keeps the identity, 1 removes it, >1 goes further "
                           "(default 1.25, the paper's)")
    anon.add_argument("--aligned", action="store_true",
                      help="inputs are aligned square face crops (default: find every face in the photos)")
    anon.add_argument("--small-faces", choices=["redact", "fail", "keep"], default="redact",
                      help="faces too small for the model: blur them (default), fail the photo, or keep them")
    anon.add_argument("--min-model-face", type=float_at_least(0.0, strict=True), default=None, metavar="PX",
                      help="eye distance below which a face is too small for the model (default 10 px)")
    anon.add_argument("--manifest", help="resumable JSON-lines record (default: OUT/faceanon-manifest.jsonl "
                                         "for several photos)")
    anon.add_argument("-r", "--recursive", action="store_true", help="look for photos in subfolders too")
    anon.add_argument("--keep-metadata", action="store_true",
                      help="keep EXIF (GPS, maker notes and thumbnails are always dropped)")
    anon.add_argument("--stop-on-error", action="store_true", help="stop at the first photo that fails")
    anon.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                      help="check every output face with a face recognizer and retry (new seed, larger degree) "
                           "while it still matches the original (default: on when the 'verify' extra is "
                           "installed)")
    anon.add_argument("--verify-threshold", type=float_at_least(0.0, strict=True), default=None, metavar="D",
                      help="identity distance below which a face still counts as the same person "
                           "(default 0.6, dlib's decision distance)")
    anon.add_argument("--verify-retries", type=int_at_least(0), default=2, metavar="N",
                      help="tries after the first, each with seed+1 and degree+0.25 (default 2; photos: a video "
                           "keeps one identity per track and is not retried)")
    anon.add_argument("--verify-fallback", choices=["fail", "redact"], default="fail",
                      help="a face still recognizable after every try: fail the photo or video (default) or blur it")
    add_detector_args(anon)
    add_model_options(anon)
    add_run_options(anon)
    add_video_options(anon, anonymize=True)
    anon.set_defaults(func=run_anonymize)

    swap = sub.add_parser("swap", help="put the face of --source onto each --driving crop",
                          description="Put the identity of one aligned face crop (--source) onto aligned face "
                                      "crops (--driving), e.g. for consented face swapping. Needs the 'diffusion' "
                                      "extra and the model weights.",
                          epilog=EXIT_CODES_EPILOG, formatter_class=HelpFormatter)
    swap.add_argument("--source", required=True, help="aligned face crop whose identity is used")
    swap.add_argument("--driving", required=True, nargs="+", help="aligned face crops (files or folders)")
    swap.add_argument("--degree", type=float_at_least(0.0), default=0.0,
                      help="degree d >= 0 applied to the source (default 0: the source's identity as it is)")
    add_model_options(swap)
    swap.set_defaults(func=run_swap)


def run_anonymize(args) -> int:
    require_diffusion("anonymize")  # both before anything heavy is imported: answered in seconds
    require_models(args)
    if only_videos(args.inputs):  # videos given by name: tracks, one identity per track, see cli/video.py
        return run_anonymize_video(args)
    if args.aligned:
        return run_anonymize_aligned(args)
    return run_anonymize_photos(args)




def run_anonymize_aligned(args) -> int:
    """Aligned 512x512 face crops in, anonymized crops out (photos: see ``faceanon anonymize``)."""
    pipe_call = lambda pipe, crops, **kw: pipe.anonymize(crops, **kw)  # noqa: E731
    return _run_on_crops(args, args.inputs, pipe_call)


def run_swap(args) -> int:
    require_diffusion("swap")
    require_models(args)
    source = read_rgb(Path(args.source))

    def pipe_call(pipe, crops, **kw):
        return pipe.swap(_square(source.rgb, args.size)[None], crops, **kw)

    return _run_on_crops(args, args.driving, pipe_call)


def _run_on_crops(args, inputs, pipe_call) -> int:
    """Read every crop first (bad input fails before the model loads), then run in batches."""
    import numpy as np

    plan = plan_crops(inputs, args.output, args.ext, args.overwrite)
    images = [read_rgb(path) for path, _ in plan]
    pipe = load_pipeline(args)
    size = args.size
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        crops = np.stack([_square(img.rgb, size) for img in chunk])
        result = pipe_call(
            pipe, crops, degree=args.degree, guidance_scale=args.guidance, num_inference_steps=args.steps,
            generator=generators(args.seed, len(chunk)), height=size, width=size, output_type="np",
        ).images
        for img, out, (_, target) in zip(chunk, result, plan[start:start + args.batch_size], strict=True):
            out = resize_crops((out * 255).round().astype(np.uint8), img.rgb.shape[0])
            write_rgb(target, img, out, args.overwrite)
            logger.info("wrote %s", target)
    return 0


def _square(rgb, size: int):
    """An aligned crop resized to the model's resolution (crops are square already)."""
    height, width = rgb.shape[:2]
    if height != width:
        raise CliError(f"aligned face crops must be square, got {width}x{height}: crop it, or let "
                       "`faceanon anonymize` find the faces in the photo (without --aligned)")
    return resize_crops(rgb, size)


def read_rgb(path: Path):
    """An aligned crop (or the swap source); an unreadable file is a usage error, before the model loads."""
    try:
        return load_image(path)
    except ImageReadError as exc:
        raise CliError(str(exc)) from exc


def write_rgb(path: Path, image, rgb, overwrite: bool):
    """Write ``rgb`` with ``image``'s alpha and colour profile; metadata is not copied."""
    try:
        save_image(path, rgb, image.alpha, overwrite=overwrite, icc_profile=image.icc_profile)
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: could not write the output ({exc})") from exc
