"""``faceanon eval ORIGINALS ANONYMIZED``: how anonymous are the outputs of any method?

The protocol of the paper (re-identification), plus what else changed:

- **Re-identification.** Every face of every original is embedded (the gallery).
  Each output face is embedded too and compared with the whole gallery: a *hit*
  when its nearest original face is its own. ``reid_rate`` = hits / faces;
  ``chance_rate`` = 1 / gallery size is what guessing would score. With a
  gallery of a few faces these rates are coarse; ``leak_rate`` (share of output
  faces closer to their own original than the recognizer's threshold, i.e.
  still "the same person") is the per-face measure the leak guard enforces.
- **Identity distances** of each output face to its own original (histogram).
- **Head pose change** from the 5 landmarks of the face found again in the
  output (roll exactly from the eye line; yaw and pitch approximately from the
  nose offset, see :func:`head_pose`).
- **Outside the faces:** PSNR and SSIM (luma, Gaussian window) over the pixels
  farther than :data:`OUTSIDE_MARGIN` px from every face region of the
  original: an anonymizer should not touch them (100 dB = identical).

Inputs are paired by relative path without the extension (``a/b.jpg`` with
``a/b.png``). An output face is looked for where its original face is; if the
detector no longer finds it (a solid fill, a strong blur) the output is
embedded at the original landmarks (an attacker who knows where the face was
does exactly this) and ``detected`` is false; ``require_detection=True`` makes
that an error instead. It runs on any method's output: diffusion, blur,
pixelate, solid.
"""

from __future__ import annotations

# The three jobs live in their own modules; their public names stay importable from here.
from .eval_metrics import OUTSIDE_MARGIN, PSNR_IDENTICAL, head_pose, psnr_ssim_outside
from .eval_protocol import EvalError, EvalResult, evaluate_folders, evaluate_images, pair_inputs
from .eval_report import render_html, write_report

__all__ = [
    "EvalError",
    "EvalResult",
    "OUTSIDE_MARGIN",
    "PSNR_IDENTICAL",
    "evaluate_images",
    "evaluate_folders",
    "head_pose",
    "pair_inputs",
    "psnr_ssim_outside",
    "render_html",
    "write_report",
]
