"""Reading and writing photos robustly.

Photos from the wild come rotated by an EXIF tag, in greyscale, palette, CMYK
or 16-bit modes, with alpha, with wide-gamut ICC profiles, truncated, empty or
enormous. :func:`load_image` turns all of them into one predictable form (sRGB
``uint8`` HxWx3 plus an optional alpha plane) or raises :class:`ImageReadError`
naming the file and what to do.

:func:`save_image` never leaves a half-written file (it writes a temporary file
in the target folder and renames it into place), never overwrites unless asked,
and writes no EXIF by default: an anonymizer must not leak GPS positions, serial
numbers or the EXIF thumbnail (which still shows the original face).

Colour management: when a photo embeds an ICC profile that is not sRGB, the
pixels are converted to sRGB with ``PIL.ImageCms`` (perceptual intent) and
``LoadedImage.icc_profile`` is ``None`` (the pixels *are* sRGB); the original
profile is kept in ``LoadedImage.source_icc_profile`` for the record. If the
profile cannot be used (broken or unsupported), the pixels are left as they are,
a warning is logged and ``icc_profile`` holds the profile, so a caller can
write it back with the output and the colours stay right.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import check_input_file
from .partials import (  # noqa: F401 (OutputExistsError and the partials names are re-exported)
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    OutputExistsError,
    is_partial_name,
    publish,
    remove_stale_partials,
    set_default_mode,
    unlink_quiet,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageWriteError",
    "LoadedImage",
    "OutputExistsError",
    "PARTIAL_PREFIX",
    "PARTIAL_SUFFIX",
    "WRITABLE_EXTENSIONS",
    "from_float",
    "is_partial_name",
    "load_image",
    "probe_image",
    "remove_stale_partials",
    "save_image",
    "to_float_batch",
]

#: Largest image (width * height) :func:`load_image` accepts. PIL's own default
#: (about 89 Mpx warning, 179 Mpx error) rejects photos from 100+ Mpx cameras
#: and large scans; 250 Mpx (about 750 MB as RGB uint8) is still safe on a
#: machine with a few GB of RAM. Pass ``max_pixels`` to change it per call.
DEFAULT_MAX_PIXELS = 250_000_000
#: zlib level of PNG outputs (see :func:`save_image`).
PNG_COMPRESS_LEVEL = 3

#: File extensions :func:`save_image` can write, mapped to PIL format names.
_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
#: Extensions treated as photos when expanding folders.
IMAGE_EXTENSIONS = frozenset(_FORMATS)
#: Extensions :func:`save_image` can write (checked when a run is planned, before any work).
WRITABLE_EXTENSIONS = frozenset(_FORMATS)

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# PIL's decompression-bomb limit is a module global; we raise it only while we
# open a file, under a lock, so other code keeps PIL's default.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, empty, corrupt, too large)."""


class ImageWriteError(ValueError):
    """An image could not be written (unknown extension, bad array, I/O error)."""


@dataclass
class LoadedImage:
    """A photo in a predictable form.

    ``rgb`` is HxWx3 ``uint8`` sRGB (or in ``icc_profile``'s space when that is
    not ``None``), already rotated by its EXIF orientation. ``alpha`` is HxW
    ``uint8`` or ``None`` when the file has no transparency. ``exif`` is the
    file's EXIF with orientation reset (pass it to :func:`save_image` only with
    ``strip_metadata=False``).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: str
    format: str | None
    icc_profile: bytes | None = None
    source_icc_profile: bytes | None = None
    exif: bytes | None = field(default=None, repr=False)
    mode: str = ""

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Let PIL open images up to ``max_pixels`` without a bomb error or warning."""
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        # PIL warns above its limit and raises above twice it; our own size
        # check (before decoding) is the one that decides.
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(int(max_pixels), 1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth plane to uint8 (rounding, not truncating)."""
    a = np.asarray(arr)
    if mode.startswith("I;16") or a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        peak = float(finite.max()) if finite.size else 0.0
        # Float images are stored as 0..1, 0..255 or 0..65535; pick the range the data fits.
        scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
        a = np.nan_to_num(a, nan=0.0, posinf=scale, neginf=0.0)
        return np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8)
    # Mode "I" (32-bit signed): 16-bit PNGs load as "I" in older Pillow versions,
    # 8-bit data converted to "I" stays 0..255. Values up to 255 are taken as
    # 8-bit, up to 65535 as 16-bit; wider data is scaled by its peak.
    a = a.astype(np.int64)
    peak = int(a.max()) if a.size else 0
    if peak <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    if peak <= 65535:
        return ((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8)
    return np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Bring any PIL mode to RGB, RGBA or a single high-bit-depth grey plane."""
    mode = im.mode
    if mode in ("RGB", "RGBA") or mode in _HIGH_BIT_MODES:
        return im
    has_alpha = mode in ("LA", "La", "PA", "RGBa") or "transparency" in im.info
    # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
    return im.convert("RGBA" if has_alpha else "RGB")


def _to_arrays(data: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels of an RGB/RGBA/high-bit image -> (RGB uint8, alpha uint8 or None), writable copies."""
    if mode in _HIGH_BIT_MODES:
        grey = _to_uint8(data, mode)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    if mode == "RGBA":
        return np.ascontiguousarray(data[:, :, :3]), np.ascontiguousarray(data[:, :, 3])
    return data.copy(), None


def _to_srgb(im: Image.Image, profile: bytes, path: str) -> tuple[Image.Image, bool]:
    """Convert ``im`` from its embedded profile to sRGB. Returns (image, converted-or-already-sRGB)."""
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without littlecms
        logger.warning("%s: has an ICC profile but Pillow lacks ImageCms; colours kept as stored", path)
        return im, False
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        desc = (ImageCms.getProfileDescription(src) or "").strip().lower()
        if "srgb" in desc:
            return im, True  # already sRGB: nothing to do
        space = src.profile.xcolor_space.strip()
        need = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space)
        if need is None:
            raise ValueError(f"unsupported profile colour space {space!r}")
        alpha = None
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            alpha = im.convert("RGBA").getchannel("A")
        base = im if im.mode == need else im.convert(need)
        out = ImageCms.profileToProfile(
            base,
            src,
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
        if alpha is not None:
            out.putalpha(alpha)
        return out, True
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.warning(
            "%s: embedded ICC profile could not be applied (%s); pixels kept in the file's colour space",
            path,
            exc,
        )
        return im, False


def _clean_exif(im: Image.Image) -> bytes | None:
    """EXIF without GPS, MakerNote or thumbnail, orientation reset to 1 (pixels are rotated)."""
    try:
        exif = im.getexif()
        if not exif:
            return None
        clean = Image.Exif()
        for tag, value in exif.items():
            if tag in (0x8825, 0x8769):  # GPS IFD pointer (dropped), Exif IFD (copied below)
                continue
            clean[tag] = value
        sub = exif.get_ifd(0x8769)
        if sub:
            sub = {k: v for k, v in sub.items() if k not in (0x927C, 0xA005)}  # MakerNote, Interop
            clean[0x8769] = sub
        clean[0x0112] = 1
        return clean.tobytes()
    except (OSError, ValueError, TypeError, KeyError, struct.error) as exc:
        logger.warning("EXIF could not be read and is dropped: %s", exc)
        return None


def _check_pixels(name: str, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(f"{name}: {w}x{h} is {w * h / 1e6:.1f} megapixels, above the limit of "
                             f"{max_pixels / 1e6:.1f}; downscale it first or raise max_pixels")


def _decode(p: Path, name: str, max_pixels: int | None):
    """Open, check size, decode, rotate upright, convert to sRGB; returns arrays + metadata."""
    with Image.open(p) as im:
        fmt = im.format
        w, h = im.size
        _check_pixels(name, w, h, max_pixels)
        if getattr(im, "n_frames", 1) > 1:
            logger.info("%s: has %d frames; using the first", name, im.n_frames)
            im.seek(0)
        im.load()
        mode = im.mode
        exif = _clean_exif(im)
        profile = im.info.get("icc_profile") or None
        orientation = im.getexif().get(0x0112, 1)
        out = im
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            out = ImageOps.exif_transpose(im)
        keep_profile: bytes | None = None
        if profile:
            out, ok = _to_srgb(out, profile, name)
            if not ok:
                keep_profile = profile
        out = _normalise_mode(out)
        out_mode = out.mode
        # Free each PIL copy as soon as it is not needed: peak memory stays near
        # twice the final array even for 100+ megapixel photos.
        if out is not im:
            im.close()
        data = np.asarray(out)  # read-only view of a bytes copy
        out.close()
        del out
        rgb, alpha = _to_arrays(data, out_mode)
    return rgb, alpha, fmt, mode, exif, profile, keep_profile


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a photo as sRGB uint8, rotated upright, with alpha kept separately.

    Raises :class:`ImageReadError` for a missing, empty, corrupt or oversized
    file. Tiny images (even 1x1) are returned: finding no face in them is the
    caller's business, not a read error.
    """
    p = Path(path)
    name = str(p)
    check_input_file(p, ImageReadError, "an image")

    try:
        with _pil_pixel_limit(max_pixels):
            rgb, alpha, fmt, mode, exif, src_profile, keep_profile = _decode(p, name, max_pixels)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{name}: image is too large to read safely ({exc}); downscale it first") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{name}: not a readable image (unknown or corrupt format); re-export it as PNG or JPEG"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise ImageReadError(
            f"{name}: image data is corrupt or truncated ({exc}); re-export or re-download it"
        ) from exc
    except MemoryError as exc:
        raise ImageReadError(f"{name}: not enough memory to decode this image; downscale it first") from exc

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageReadError(f"{name}: decoded to an unexpected shape {rgb.shape}")
    if alpha is not None and bool((alpha == 255).all()):
        alpha = None  # an opaque alpha plane carries nothing; keep outputs simple
    return LoadedImage(
        rgb=rgb,
        alpha=alpha,
        path=name,
        format=fmt,
        icc_profile=keep_profile,
        source_icc_profile=src_profile,
        exif=exif,
        mode=mode,
    )


def probe_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a photo from its header, after the cheap checks :func:`load_image` makes
    (exists, not empty, known format, size limit, PIL's integrity check); raises :class:`ImageReadError`.
    Lets a run refuse broken inputs before it loads a model."""
    p = Path(path)
    name = str(p)
    check_input_file(p, ImageReadError, "an image")
    try:
        with _pil_pixel_limit(max_pixels), Image.open(p) as im:
            w, h = im.size
            _check_pixels(name, w, h, max_pixels)
            im.verify()
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{name}: not a readable image (unknown or corrupt format); re-export it as PNG or JPEG") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            f"{name}: image data is corrupt or truncated ({exc}); re-export or re-download it"
        ) from exc
    return w, h


def _check_array(rgb: np.ndarray, alpha: np.ndarray | None, path: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageWriteError(
            f"{path}: expected an HxWx3 uint8 array, got "
            f"{getattr(rgb, 'shape', None)} {getattr(rgb, 'dtype', type(rgb).__name__)}; "
            "use from_float() for float images"
        )
    if alpha is not None and (
        not isinstance(alpha, np.ndarray) or alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]
    ):
        raise ImageWriteError(
            f"{path}: alpha must be an HxW uint8 array matching the image {rgb.shape[:2]}, got "
            f"{getattr(alpha, 'shape', None)} {getattr(alpha, 'dtype', None)}"
        )


def save_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    overwrite: bool = False,
    quality: int = 95,
    strip_metadata: bool = True,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> Path:
    """Write ``rgb`` (HxWx3 uint8) atomically; the format follows the extension.

    The file appears complete or not at all (temporary file + ``os.replace``).
    Raises :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is
    false. ``exif`` is written only with ``strip_metadata=False`` (and even then
    :func:`load_image` has already removed GPS, MakerNote and the thumbnail).
    Alpha is dropped with a warning for formats without it (JPEG, BMP).
    Returns the written path.
    """
    p = Path(path)
    name = str(p)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ImageWriteError(
            f"{name}: unsupported output extension {p.suffix!r}; use one of {', '.join(sorted(_FORMATS))}"
        )
    _check_array(rgb, alpha, name)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{name}: output exists; pass --overwrite (overwrite=True) to replace it")

    if alpha is not None and fmt not in _ALPHA_FORMATS:
        logger.warning("%s: %s has no alpha channel; transparency dropped", name, fmt)
        alpha = None
    arr = np.ascontiguousarray(rgb)
    im = Image.fromarray(arr, "RGB")
    if alpha is not None:
        im.putalpha(Image.fromarray(np.ascontiguousarray(alpha), "L"))

    params: dict = {}
    if fmt == "JPEG":
        params.update(quality=int(quality), subsampling=0 if quality >= 90 else 2, optimize=True)
    elif fmt == "WEBP":
        params.update(quality=int(quality), method=4)
    elif fmt == "PNG":
        # zlib level 3: a third of level 6's time (0.1 s instead of 0.29 s for a 1 Mpx photo, most of a redaction
        # run's work) for files about 12% larger; PNG stays lossless either way.
        params.update(compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "TIFF":
        params.update(compression="tiff_lzw")
    if icc_profile and fmt != "BMP":
        params["icc_profile"] = icc_profile
    if exif and not strip_metadata and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["exif"] = exif

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"{name}: cannot create the output folder ({exc})") from exc

    fd, tmp = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{p.name}.", suffix=PARTIAL_SUFFIX, dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            im.save(fh, format=fmt, **params)
            fh.flush()
            os.fsync(fh.fileno())
        set_default_mode(tmp)
        publish(tmp, p, overwrite)
    except OutputExistsError:
        unlink_quiet(tmp)
        raise
    except (OSError, ValueError, KeyError) as exc:
        unlink_quiet(tmp)
        raise ImageWriteError(f"{name}: could not write the image ({exc})") from exc
    except BaseException:
        unlink_quiet(tmp)
        raise
    return p


def to_float_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 image(s) -> float32 [N,H,W,3] in 0..1 (ComfyUI ``IMAGE`` layout)."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape [N,H,W,3] or [H,W,3], got {arr.shape} {arr.dtype}")
    return arr.astype(np.float32) * np.float32(1.0 / 255.0)


def from_float(x: np.ndarray) -> np.ndarray:
    """float 0..1 array -> uint8 (rounded, clipped). Raises ValueError on NaN/inf."""
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected a float array, got {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
