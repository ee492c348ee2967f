"""benchmarks.device_suite in its small form on the CPU: one JSON document with sane keys and values.

No timing thresholds (speed targets are the benchmark's business); these tests check that every
section runs, reports what it claims, and that the FLOP account of the step is right.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import device_suite
from benchmarks.step_speed import count_step_flops, gap_report, reference_tokens

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite():
    """The suite as a user runs it, in its own process: its trainer section creates a bf16 Accelerator,
    whose process-wide state would otherwise leak into every later test of this session."""
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.device_suite", "--small", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, json.loads(done.stdout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_suite_runs_every_section(suite):
    code, doc = suite
    assert code == 0 and doc["errors"] == []
    assert doc["benchmark"] == "device_suite" and doc["config"] == "small" and doc["device_type"] == "cpu"
    assert set(doc["sections"]) == {"step", "memory", "end_to_end", "comfyui", "trainer"}
    assert all(v >= 0 for v in doc["section_seconds"].values()) and positive(doc["seconds"])


@pytest.mark.slow
def test_step_section(suite):
    step = suite[1]["sections"]["step"]
    flops = step["gflops_per_step"]
    assert flops["naive"] > flops["ours"] > flops["plain"] > 0
    for dtype in ("float32", "bfloat16"):
        row = step[dtype]
        assert all(positive(row[f"{m}_s_per_step"]) for m in ("plain", "ours", "naive"))
        assert row["naive_vs_ours"] == pytest.approx(row["naive_s_per_step"] / row["ours_s_per_step"], rel=1e-2)
        assert row["ours_vs_plain_predicted_by_flops"] == pytest.approx(flops["ours"] / flops["plain"], rel=1e-2)
        assert 0 < row["extra_attention_flop_share"] < 1
    # Same weights, same inputs: the two formulations agree to fp32 rounding (bf16 is looser, not checked).
    assert step["float32"]["max_abs_diff_ours_naive"] < 1e-4


@pytest.mark.slow
def test_memory_section_on_cpu(suite):
    memory = suite[1]["sections"]["memory"]
    assert memory["kind"].startswith("not measured")  # no CUDA: no VRAM figure is invented
    for mode in ("all_resident", "refnets_offloaded"):
        assert memory[mode]["peak_mib"] is None
        assert positive(memory[mode]["weights_on_device_mib"])
        assert memory[mode]["unet_calls"] == memory["steps"]  # CFG rows go in one call per step


@pytest.mark.slow
def test_end_to_end_and_trainer_sections(suite):
    e2e = suite[1]["sections"]["end_to_end"]
    batches = [int(k.split("_")[1]) for k in e2e if k.startswith("batch_")]
    assert batches == [1, 2, 4]
    for b in batches:
        row = e2e[f"batch_{b}"]
        assert row["faces"] == b and positive(row["seconds"])
        assert row["seconds_per_face"] == pytest.approx(row["seconds"] / b, rel=1e-2, abs=1e-3)
    trainer = suite[1]["sections"]["trainer"]
    assert trainer["mixed_precision"] == "bf16" and trainer["gradient_checkpointing"] is True
    assert positive(trainer["optimizer_steps_per_s"])
    comfy = suite[1]["sections"]["comfyui"]
    assert "COMFYUI_PATH" in comfy["skipped"]


def test_flop_count_is_the_extra_attention():
    """ours - plain = the attention of N own queries over 2N more keys, exactly (QK^T and AV, 2 FLOPs a MAC)."""
    from diffusers import UNet2DConditionModel

    from faceanon_core.method.attention import attn1_names, route_states

    config, size, batch = device_suite.unet_config(device_suite.SMALL_DIVISOR), 64, 2
    flops = count_step_flops(config, size, batch)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    routing = route_states(attn1_names(unet), "as_trained")
    tokens = reference_tokens(unet, routing, size // 8, batch, torch.float32, torch.device("meta"), None)
    expected = 0
    for layer, ref in routing.items():
        own = tokens[ref].shape[1] // 2  # [source, driving] of the same token count as the layer's own
        inner = unet.get_submodule(layer).to_q.out_features
        expected += 2 * 2 * batch * own * (2 * own) * inner
    assert flops["ours"] - flops["plain"] == expected
    assert flops["naive"] > flops["ours"]


def test_gap_report_arithmetic():
    report = gap_report({"plain": 1.0, "ours": 1.4, "naive": 2.0}, {"plain": 100, "ours": 120, "naive": 200})
    assert report["ours_vs_plain_measured"] == 1.4 and report["ours_vs_plain_predicted_by_flops"] == 1.2
    assert report["gap_explained_by_attention"] == pytest.approx(0.5)
    assert report["extra_attention_flop_share"] == pytest.approx(20 / 120, abs=1e-4)
    assert gap_report({"plain": 1.0, "ours": 0.9, "naive": 2.0}, {"plain": 1, "ours": 2, "naive": 3})[
        "gap_explained_by_attention"] is None
