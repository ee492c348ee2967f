"""imageio: robust reading and atomic, metadata-free writing of photos."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from faceanon_core.media.images import (
    ImageReadError,
    ImageWriteError,
    OutputExistsError,
    from_float,
    load_image,
    save_image,
    to_float_batch,
)
from helpers.faces import astronaut

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("ext", ["png", "jpg", "jpeg", "webp", "tiff", "bmp"])
def test_roundtrip_formats(tmp_path, ext):
    a = astronaut()
    p = save_image(tmp_path / f"x.{ext}", a)
    img = load_image(p)
    assert img.rgb.shape == a.shape and img.rgb.dtype == np.uint8 and img.alpha is None
    err = np.abs(img.rgb.astype(int) - a).mean()
    assert err < (3.0 if ext in ("jpg", "jpeg", "webp") else 1e-9)
    assert os.listdir(tmp_path) == [f"x.{ext}"]  # no temporary files left


def test_exif_orientation_is_applied(tmp_path):
    a = astronaut()[:, :300]  # 512 tall, 300 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(a).save(tmp_path / "o6.jpg", exif=exif.tobytes(), quality=98)
    img = load_image(tmp_path / "o6.jpg")
    assert img.rgb.shape == (300, 512, 3)
    expected = np.rot90(a, k=-1)
    assert np.abs(img.rgb.astype(int) - expected).mean() < 3


def test_rgba_alpha_kept_and_dropped_for_jpeg(tmp_path, caplog):
    a = astronaut()
    alpha = np.tile((np.arange(512) // 2).astype(np.uint8), (512, 1))
    im = Image.fromarray(a)
    im.putalpha(Image.fromarray(alpha))
    im.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert np.array_equal(img.rgb, a) and np.array_equal(img.alpha, alpha)
    save_image(tmp_path / "b.png", img.rgb, img.alpha)
    assert np.array_equal(load_image(tmp_path / "b.png").alpha, alpha)
    with caplog.at_level(logging.WARNING):
        save_image(tmp_path / "c.jpg", img.rgb, img.alpha)
    assert "transparency dropped" in caplog.text
    assert load_image(tmp_path / "c.jpg").alpha is None


def test_16bit_png(tmp_path):
    a = astronaut()
    a16 = np.minimum(a.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(a16, cv2.COLOR_RGB2BGR))
    assert Image.open(tmp_path / "rgb16.png").info.get("dpi") is None
    assert np.abs(load_image(tmp_path / "rgb16.png").rgb.astype(int) - a).max() <= 1
    grey = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    g16 = grey.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    img = load_image(tmp_path / "g16.png")
    assert img.rgb.shape == a.shape
    assert np.array_equal(img.rgb[..., 0], grey) and np.array_equal(img.rgb[..., 2], grey)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "1", "F", "I"])
def test_other_modes_become_rgb(tmp_path, mode):
    a = astronaut()
    im = Image.fromarray(a).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "F", "I") else "x.png")
    im.save(path)
    img = load_image(path)
    assert img.rgb.shape == a.shape and img.rgb.dtype == np.uint8
    if mode not in ("F", "I"):
        ref = np.asarray(im.convert("RGB"))
    else:
        ref = np.asarray(Image.fromarray(a).convert("L").convert("RGB"))
    assert np.abs(img.rgb.astype(int) - ref).mean() < 1.0


def test_srgb_profile_is_accepted_and_unknown_profile_kept(tmp_path, caplog):
    a = astronaut()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(a).save(tmp_path / "s.png", icc_profile=srgb)
    img = load_image(tmp_path / "s.png")
    assert img.icc_profile is None and img.source_icc_profile == srgb
    assert np.array_equal(img.rgb, a)
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.fromarray(a).save(tmp_path / "l.png", icc_profile=lab)
    with caplog.at_level(logging.WARNING):
        img = load_image(tmp_path / "l.png")
    assert img.icc_profile == lab and "ICC profile" in caplog.text


def test_gps_and_exif_stripped_by_default(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}
    Image.fromarray(astronaut()).save(tmp_path / "gps.jpg", exif=exif.tobytes())
    assert Image.open(tmp_path / "gps.jpg").getexif().get_ifd(0x8825)
    img = load_image(tmp_path / "gps.jpg")
    save_image(tmp_path / "out.jpg", img.rgb, exif=img.exif)
    with Image.open(tmp_path / "out.jpg") as out:
        assert not out.getexif() and "exif" not in out.info
    # Keeping metadata keeps the camera, never the position.
    save_image(tmp_path / "keep.jpg", img.rgb, exif=img.exif, strip_metadata=False)
    with Image.open(tmp_path / "keep.jpg") as out:
        e = out.getexif()
        assert e.get(0x010F) == "CameraMaker" and not e.get_ifd(0x8825) and 0x8825 not in e


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png.*not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg.*0 bytes"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    save_image(tmp_path / "ok.jpg", astronaut())
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="trunc.jpg.*(corrupt|truncated)"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)
    assert issubclass(ImageReadError, ValueError)


def test_tiny_image_loads(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert img.rgb.shape == (1, 1, 3) and img.rgb[0, 0].tolist() == [10, 20, 30]


def test_pixel_limit(tmp_path):
    Image.new("L", (400, 300)).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="megapixels"):
        load_image(tmp_path / "x.png", max_pixels=100_000)
    assert load_image(tmp_path / "x.png", max_pixels=120_000).rgb.shape == (300, 400, 3)


def test_huge_image_loads_with_bounded_memory(tmp_path):
    """A 12000x9000 (108 Mpx, above PIL's default bomb warning) photo loads; peak RSS stays < 1.6 GB."""
    path = tmp_path / "huge.png"
    Image.new("1", (12000, 9000), 1).save(path)  # 1-bit: tiny file, fast to write
    code = textwrap.dedent(
        f"""
        import json, resource, sys, warnings
        warnings.simplefilter("error")
        from faceanon_core.media.images import load_image
        img = load_image({str(path)!r})
        try:  # this process's own peak: VmHWM starts afresh at exec; ru_maxrss can carry the forking
            # parent's size (pytest's, well over a GB late in a full run)
            with open("/proc/self/status") as status:
                peak_kb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        except OSError:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"shape": list(img.rgb.shape), "v": int(img.rgb[4500, 6000, 1]),
                          "rss_mb": peak_kb / 1024}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == [9000, 12000, 3] and res["v"] == 255
    assert res["rss_mb"] < 1600, res  # RGB 324 MB + PIL's copy + libraries: 1.06 GB measured


def test_save_refuses_overwrite_and_is_atomic(tmp_path, monkeypatch):
    a = astronaut()
    p = save_image(tmp_path / "sub" / "dir" / "x.png", a)  # creates parents
    before = p.read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_image(p, a[::-1].copy())
    assert p.read_bytes() == before
    assert issubclass(OutputExistsError, FileExistsError)

    # A failure in the middle of encoding leaves neither a partial output nor a temp file.
    def boom(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(ImageWriteError, match="disk full"):
        save_image(tmp_path / "new.png", a)
    with pytest.raises(ImageWriteError):
        save_image(p, a, overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / "new.png").exists()
    assert p.read_bytes() == before
    assert sorted(os.listdir(p.parent)) == ["x.png"]
    save_image(p, a[::-1].copy(), overwrite=True)
    assert np.array_equal(load_image(p).rgb, a[::-1])
    assert (os.stat(p).st_mode & 0o777) != 0o600  # not mkstemp's private mode


def test_save_rejects_bad_input(tmp_path):
    a = astronaut()
    with pytest.raises(ImageWriteError, match="extension"):
        save_image(tmp_path / "x.gifx", a)
    with pytest.raises(ImageWriteError, match="uint8"):
        save_image(tmp_path / "x.png", a.astype(np.float32))
    with pytest.raises(ImageWriteError, match="alpha"):
        save_image(tmp_path / "x.png", a, np.zeros((3, 3), np.uint8))


def test_float_helpers():
    a = astronaut()
    f = to_float_batch(a)
    assert f.shape == (1, 512, 512, 3) and f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    assert np.array_equal(from_float(f[0]), a)
    assert to_float_batch([a, a]).shape == (2, 512, 512, 3)
    with pytest.raises(ValueError, match="NaN"):
        from_float(np.full((2, 2, 3), np.nan, np.float32))
