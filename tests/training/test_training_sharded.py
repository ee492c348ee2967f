"""Sharded training: validation and export read the weights gathered by accelerate, never the shards.

accelerate (1.x) runs FSDP only on accelerators: on a CPU machine ``accelerate launch --use_fsdp``
falls back to plain processes. So the FSDP path is tested with a real single-process Accelerator
that reports FSDP and gathers as FSDP does (``get_state_dict`` returns the full weights) while
the live modules hold garbage, as a rank's shards would look from outside. A two-process gloo
probe runs too and tests the real thing where the installed accelerate supports FSDP on the CPU.
DeepSpeed is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers.training import tiny_config, write_triplets
from training.config import config_from_dict
from training.model import part_state_dicts
from training.trainer import Trainer, UnsupportedBackend

REPO = Path(__file__).resolve().parents[2]


class ShardedLike:
    """A real Accelerator that says it is ``backend`` and gathers ``full`` on ``get_state_dict``."""

    def __init__(self, real, backend):
        self._real, self._backend, self.full, self.gathers = real, backend, None, 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    @property
    def distributed_type(self):
        return self._backend

    def get_state_dict(self, model, unwrap=True):
        self.gathers += 1
        assert self.full is not None, "the test sets the full weights before gathering"
        return {k: v.clone() for k, v in self.full.items()}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_triplets(tmp_path_factory.mktemp("triplets"), 2)


def config(model_dir, data_file, out, **sections):
    return config_from_dict(tiny_config(
        model_dir, data_file, out,
        validation={"data": str(data_file), "images": str(data_file.parent / "images"), "every": 0, "steps": 2,
                    "num_images": 1}, **sections))


def test_fsdp_validation_and_export_use_the_gathered_weights(tiny_model_dir, data_file, tmp_path):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    reference = Trainer(config(tiny_model_dir, data_file, tmp_path / "plain"))
    expected_grid = np.asarray(Image.open(reference.validate()))

    acc = ShardedLike(Accelerator(mixed_precision="no"), DistributedType.FSDP)
    trainer = Trainer(config(tiny_model_dir, data_file, tmp_path / "fsdp"), accelerator=acc)
    assert trainer.sharded
    acc.full = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():  # what a rank holds outside forward is not the model: make that visible
        for param in trainer.model.parameters():
            param.fill_(0.5)

    grid = np.asarray(Image.open(trainer.validate()))
    assert acc.gathers == 1
    assert np.abs(grid.astype(int) - expected_grid).max() <= 1  # the full weights sampled, not the shards

    out = trainer.export(tmp_path / "final")
    assert acc.gathers == 2
    for part in ("unet", "referencenet", "conditioning_referencenet"):
        exported = load_file(str(out / part / "diffusion_pytorch_model.safetensors"))
        for key, value in exported.items():
            torch.testing.assert_close(value, acc.full[f"{part}.{key}"], rtol=0, atol=0)
    assert json.loads((out / "unet" / "config.json").read_text())["faceanon_routing"] == "as_trained"


def test_gathered_weights_that_do_not_match_are_refused(tiny_model_dir, data_file, tmp_path):
    trainer = Trainer(config(tiny_model_dir, data_file, tmp_path / "t"))
    full = trainer.model.state_dict()
    wrapped = {k.replace("unet.", "unet._fsdp_wrapped_module.", 1): v for k, v in full.items()}
    with pytest.raises(ValueError, match="does not match unet"):
        part_state_dicts(trainer.model, wrapped)
    missing = {k: v for k, v in full.items() if not k.startswith("referencenet.")}
    with pytest.raises(ValueError, match="does not match referencenet"):
        part_state_dicts(trainer.model, missing)


def test_deepspeed_is_refused_before_anything_is_written(tiny_model_dir, data_file, tmp_path):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    out = tmp_path / "ds"
    with pytest.raises(UnsupportedBackend, match="DeepSpeed") as info:
        Trainer(config(tiny_model_dir, data_file, out), accelerator=ShardedLike(Accelerator(mixed_precision="no"),
                                                                                 DistributedType.DEEPSPEED))
    assert "FSDP" in str(info.value) and "wrong weights" in str(info.value)
    assert not out.exists()


PROBE = """
import json, os
from accelerate import Accelerator
acc = Accelerator()
print(json.dumps({"backend": acc.distributed_type.value, "rank": acc.process_index}))
"""


@pytest.mark.slow
def test_fsdp_two_cpu_processes_over_gloo(tiny_model_dir, data_file, tmp_path):
    """Where accelerate runs FSDP on the CPU: a real 2-process run exports the single-process weights."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("ACCELERATE_USE_CPU", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_state_dict_type", "FULL_STATE_DICT"]
    (tmp_path / "probe.py").write_text(PROBE)
    probe = subprocess.run(launch + [str(tmp_path / "probe.py")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    backends = {json.loads(line)["backend"] for line in probe.stdout.splitlines() if line.startswith("{")}
    if probe.returncode != 0 or backends != {"FSDP"}:
        import accelerate

        pytest.skip(f"accelerate {accelerate.__version__} with torch {torch.__version__} does not run FSDP on the "
                    f"CPU (probe exit {probe.returncode}, backends {sorted(backends)}); the gathered-weights path is "
                    "tested with a simulated FSDP accelerator above")
    cfg = tiny_config(tiny_model_dir, data_file, tmp_path / "fsdp",
                      train={"max_steps": 2, "gradient_accumulation_steps": 2, "export_at_end": True},
                      validation={"data": str(data_file), "images": str(data_file.parent / "images"), "every": 2,
                                  "steps": 2, "num_images": 1})
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    done = subprocess.run(launch + ["-m", "training", "train", str(tmp_path / "c.yaml")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fsdp" / "validation" / "step-00000002.png").is_file()
    single = Trainer(config_from_dict(tiny_config(tiny_model_dir, data_file, tmp_path / "single",
                                                  train={"max_steps": 2, "gradient_accumulation_steps": 4})))
    single.fit()
    exported = load_file(str(tmp_path / "fsdp" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, value in single.model.unet.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=1e-4, atol=1e-6)
