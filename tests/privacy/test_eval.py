"""``faceanon eval``: the re-identification protocol on redaction baselines, and clear errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from helpers.faces import astronaut, grace_hopper

pytest.importorskip("dlib", reason="needs the 'verify' extra: pip install 'comfyui-faceanon[verify]'")

from faceanon_core.faces import TEMPLATE_5, default_detector  # noqa: E402
from faceanon_core.faces.redact import redact_image  # noqa: E402
from faceanon_core.media.images import save_image  # noqa: E402
from faceanon_core.privacy.evaluate import EvalError, evaluate_images, head_pose, pair_inputs  # noqa: E402

PHOTOS = {"astronaut": astronaut, "grace_hopper": grace_hopper}


def run(rec, method, strength=None, **kw):
    pairs = [(f(), f() if method is None else redact_image(f(), method, strength, faces=_det(k)).image, k)
             for k, f in PHOTOS.items()]
    return evaluate_images(pairs, rec, **kw)


_DETS: dict = {}


def _det(k):
    if k not in _DETS:
        _DETS[k] = default_detector().detect(PHOTOS[k]())
    return _DETS[k]


def test_unchanged_outputs_are_fully_reidentified(rec):
    r = run(rec, None)
    s = r.summary
    assert s["faces"] == 2 and s["reid_rate"] == 1.0 and s["leak_rate"] == 1.0 and s["chance_rate"] == 0.5
    assert s["distance"]["max"] < 0.01 and s["psnr_outside_db"]["min"] == 100.0 and s["ssim_outside"]["min"] == 1.0
    assert s["detected_in_output_rate"] == 1.0 and s["pose_change_deg"]["roll"]["max"] < 0.5
    assert all(f["rank_of_own"] == 1 for f in r.faces)
    json.dumps(r.to_dict())


def test_blur_strength_moves_the_numbers_the_expected_way(rec, monkeypatch):
    import faceanon_core.faces.redact as redact

    monkeypatch.setattr(redact, "MIN_BLUR_STRENGTH", 0.01)  # leaky blurs on purpose: the metric must see them
    results = [run(rec, "blur", s).summary for s in (0.02, 0.1, 0.35)]
    means = [s["distance"]["mean"] for s in results]
    assert means[0] < means[1] < means[2], means
    assert results[0]["leak_rate"] == 1.0 and results[-1]["leak_rate"] == 0.0
    leaks = [s["leak_rate"] for s in results]
    assert leaks == sorted(leaks, reverse=True)
    # Redaction covers the whole head (issue 20), so pixels outside the inner face change: the metric sees
    # them (PSNR outside < 100); nothing changes outside the head regions themselves.
    assert all(s["psnr_outside_db"]["min"] < 100.0 for s in results)
    for k, f in PHOTOS.items():
        out = redact_image(f(), "blur", 0.35, faces=_det(k))
        outside = redact.head_mask(f().shape, _det(k)) == 0
        assert np.array_equal(out.image[outside], f()[outside])
    # A strong blur hides the face from the detector too: embedded at the original landmarks.
    assert results[-1]["detected_in_output_rate"] < 1.0


def test_changes_outside_the_faces_lower_psnr_and_ssim(rec):
    a = astronaut()
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    s = evaluate_images([(a, noisy, "astronaut")], rec).summary
    assert 20 < s["psnr_outside_db"]["mean"] < 35 and s["ssim_outside"]["mean"] < 0.9


def test_head_pose_from_landmarks():
    lm = TEMPLATE_5 * 512
    p = head_pose(lm)
    assert abs(p["roll"]) < 0.5 and abs(p["yaw"]) < 1 and abs(p["pitch"]) < 1
    c = lm.mean(0)
    t = np.deg2rad(20)
    rot = (lm - c) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) + c
    assert abs(head_pose(rot)["roll"] - 20) < 0.5 and abs(head_pose(rot)["yaw"]) < 1
    turned = lm.copy()
    turned[2, 0] += 40  # nose moves sideways: the head turns
    assert head_pose(turned)["yaw"] > 10


def test_no_face_in_an_output_is_a_clear_error_when_required(rec):
    a = astronaut()
    blank = np.full_like(a, 128)
    with pytest.raises(EvalError, match="no face found in the anonymized photo"):
        evaluate_images([(a, blank, "astronaut.png")], rec, require_detection=True)
    r = evaluate_images([(a, blank, "astronaut.png")], rec)  # default: embedded where the face was
    assert r.faces[0]["detected"] is False and r.faces[0]["pose_change"] is None


def test_bad_inputs(rec, tmp_path):
    a = astronaut()
    with pytest.raises(EvalError, match="no face found in any original"):
        evaluate_images([(np.full_like(a, 90), a, "grey")], rec)
    with pytest.raises(EvalError, match="same size"):
        evaluate_images([(a, a[:256], "astronaut")], rec)
    (tmp_path / "o").mkdir()
    (tmp_path / "x").mkdir()
    save_image(tmp_path / "o" / "a.png", a)
    save_image(tmp_path / "o" / "b.png", a)
    save_image(tmp_path / "x" / "a.jpg", a)
    save_image(tmp_path / "x" / "c.png", a)
    with pytest.raises(EvalError, match=r"1 original\(s\) without an anonymized version.*b.*without an original.*c"):
        pair_inputs(tmp_path / "o", tmp_path / "x")
    (tmp_path / "x" / "c.png").unlink()
    save_image(tmp_path / "x" / "b.webp", a)
    assert [k for _, _, k in pair_inputs(tmp_path / "o", tmp_path / "x")] == ["a", "b"]
    with pytest.raises(EvalError, match="no such file"):
        pair_inputs(tmp_path / "nothing", tmp_path / "x")


def eval_main(argv):
    from faceanon_core.cli import evaluate as cli_eval

    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_command_writes_json_and_html(rec, tmp_path, capsys):
    orig, anon = tmp_path / "orig", tmp_path / "anon"
    for k, f in PHOTOS.items():
        save_image(orig / f"{k}.png", f())
        save_image(anon / f"{k}.jpg", redact_image(f(), "pixelate", 8, faces=_det(k)).image)
    assert eval_main(["eval", str(orig), str(anon), "-o", str(tmp_path / "report"), "--worst", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["faces"] == 2 and 0 < summary["psnr_outside_db"]["mean"] < 100  # JPEG re-encoding
    data = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert len(data["faces"]) == 2 and {"distance", "hit", "nearest_original"} <= set(data["faces"][0])
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<svg") >= 2 and page.count("data:image/png;base64,") == 4 and "proxy" in page
    # Existing report kept; mismatched folders: exit 2 with a one-line reason.
    assert eval_main(["eval", str(orig), str(anon), "-o", str(tmp_path / "report")]) == 2
    assert "exists" in capsys.readouterr().err
    (anon / "astronaut.jpg").unlink()
    assert eval_main(["eval", str(orig), str(anon)]) == 2
    assert "without an anonymized version" in capsys.readouterr().err
