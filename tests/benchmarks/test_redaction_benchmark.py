"""benchmarks/redaction_vs_deface.py runs (ours only, tiny inputs), so the benchmark cannot rot, and its
metrics notice an uncovered face."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from benchmarks import redaction_vs_deface


def _bench():
    return redaction_vs_deface


def test_metrics_count_covered_inner_and_uncovered_faces():
    b = _bench()
    mask = np.zeros((100, 200), bool)
    mask[10:50, 10:50] = True  # face 1 fully changed
    mask[24:36, 84:96] = True  # face 2: 144 px, 9% of its box, 25% of its inner 24x24 part
    s = b.Score()
    s.add(mask, [(10, 10, 50, 50), (70, 10, 110, 50), (150, 60, 190, 100), (-35, 60, 5, 100)])
    r = s.row()
    # face 4 is 5/40 = 12.5% in the frame: counted as a face, not as a face-frame that must be covered
    assert (r["faces"], r["boxes_covered"], r["inner_covered"]) == (4, 1, 1)
    # untouched (< 10% of the box): faces 2, 3, 4; uncovered among the counted: faces 2 and 3
    assert (r["untouched"], r["face_frames_counted"], r["face_frames_uncovered"]) == (3, 3, 2)
    assert r["over_redaction_pct"] == 0.0


def test_benchmark_runs_ours_only_on_tiny_inputs(tmp_path):
    b = _bench()
    res = b.main(["--work", str(tmp_path), "--ours-only", "--tiny", "--frames", "6"])
    assert set(res) == {"group", "small", "clip"}
    for name, row in res.items():
        ours = row["ours"]
        assert "deface" not in row
        assert ours["faces"] > 0 and ours["fps"] > 0, name
        assert ours["face_frames_uncovered"] == 0, (name, ours)  # every counted face's inner part blurred
        assert ours["untouched"] == 0, (name, ours)
    assert res["clip"]["ours"]["audio_kept"] is True
    assert res["group"]["ours"]["faces"] == 6 and res["small"]["ours"]["faces"] == 6
