"""The offline trainer (issue 6) with tiny random models on the CPU."""

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

from helpers.training import SIZE, smooth_image, tiny_config, write_triplets
from training.cli import EXIT_BAD_DATA
from training.cli import main as cli_main
from training.config import ConfigError, config_from_dict, load_config, schedule_value
from training.data import DatasetError, TripletDataset, align_dataset, check_dataset, read_triplets
from training.model import FaceAnonTrainModel, export_folder
from training.trainer import Trainer, list_checkpoints, min_snr_weights

REPO = Path(__file__).resolve().parents[2]


def make_trainer(model_dir, data_file, out, **sections) -> Trainer:
    return Trainer(config_from_dict(tiny_config(model_dir, data_file, out, **sections)))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_triplets(tmp_path_factory.mktemp("triplets"), 2)


# -- configuration ------------------------------------------------------------------------


def test_config_yaml_toml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  init_from: /m\ndata:\n  train: /d.jsonl\n"
                                     "optim:\n  learning_rate: 2e-5\n"
                                     "curriculum:\n  real_driving: [[0, 0.5], [100, 0.0]]\n")
    (tmp_path / "c.toml").write_text('[model]\ninit_from = "/m"\n[data]\ntrain = "/d.jsonl"\n[train]\nmax_steps = 7\n')
    config = load_config(tmp_path / "c.yaml", ["train.max_steps=5", "loss.snr_gamma=5.0", "model.routing=per_layer"])
    assert config.optim.learning_rate == 2e-5 and config.train.max_steps == 5 and config.loss.snr_gamma == 5.0
    assert config.model.routing == "per_layer" and config.train.gradient_accumulation_steps == 8  # default
    assert config.loss.conditioning_dropout == 0.1 and config.optim.learning_rate == 2e-5
    assert load_config(tmp_path / "c.toml").train.max_steps == 7
    assert schedule_value([(0, 0.5), (100, 0.0)], 50) == pytest.approx(0.25)
    assert schedule_value([(0, 0.5), (100, 0.0)], 1e9) == 0.0
    with pytest.raises(ConfigError, match="unknown key train.max_step"):
        load_config(tmp_path / "c.yaml", ["train.max_step=5"])
    with pytest.raises(ConfigError, match="routing"):
        load_config(tmp_path / "c.yaml", ["model.routing=sideways"])


# -- data ---------------------------------------------------------------------------------


def test_broken_dataset_is_reported_and_refused(tmp_path, tiny_model_dir, capsys):
    good = write_triplets(tmp_path, 2)
    images = tmp_path / "images"
    (images / "broken.png").write_bytes(b"not a png")
    Image.fromarray(smooth_image(5, 48)).save(images / "small.png")
    lines = good.read_text().splitlines()
    first = json.loads(lines[0])
    lines += [
        lines[0],  # duplicate
        json.dumps({**first, "ground_truth": first["source_image"]}),  # source == ground truth
        json.dumps({**first, "source_image": "nowhere.png"}),  # missing
        json.dumps({**first, "source_image": "broken.png"}),  # unreadable
        json.dumps({**first, "ground_truth": "small.png"}),  # wrong size (and differs from conditioning)
        "{not json",
        json.dumps({"source_image": "a.png"}),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    report = check_dataset(bad, images, resolution=SIZE)
    text = report.format()
    assert not report.ok
    for needle in ("line 3: duplicate of line 1", "line 4: the source image is the ground truth",
                   "line 5: source_image 'nowhere.png': missing file", "line 6: source_image 'broken.png': unreadable",
                   "line 7: ground_truth 'small.png' is 48x48, expected 64x64", "differ in size",
                   "line 8: not valid JSON", "line 9: missing or non-string key(s)"):
        assert needle in text, needle
    assert check_dataset(good, images, resolution=SIZE).ok
    assert check_dataset(good, images, resolution=SIZE, mode="quick").ok

    assert cli_main(["check-data", str(bad), "--images", str(images), "--resolution", str(SIZE)]) == EXIT_BAD_DATA
    assert "duplicate of line 1" in capsys.readouterr().out
    assert cli_main(["check-data", str(good), "--images", str(images), "--resolution", str(SIZE)]) == 0

    config = tiny_config(tiny_model_dir, bad, tmp_path / "run")
    with pytest.raises(DatasetError) as info:
        Trainer(config_from_dict(config))
    assert "duplicate of line 1" in str(info.value) and not info.value.report.ok
    assert (tmp_path / "run" / "data_report.txt").read_text().startswith("dataset ")
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert cli_main(["train", str(tmp_path / "c.json")]) == EXIT_BAD_DATA
    assert "training refused" in capsys.readouterr().err


def test_flip_is_consistent_and_samples_are_deterministic(tmp_path):
    data = write_triplets(tmp_path, 3)
    triplets = read_triplets(data)
    plain = TripletDataset(triplets, tmp_path / "images", resolution=SIZE, random_flip=0.0, seed=3)
    flipping = TripletDataset(triplets, tmp_path / "images", resolution=SIZE, random_flip=1.0, seed=3)
    for index in range(4):
        a, b = plain[index], flipping[index]
        assert int(a["line"]) == int(b["line"]) and bool(b["flipped"]) and not bool(a["flipped"])
        for role in ("source_image", "conditioning_image", "ground_truth"):
            assert torch.equal(b[role], a[role].flip(-1))
    again = TripletDataset(triplets, tmp_path / "images", resolution=SIZE, seed=3)
    for index in (0, 5, 11):
        x, y = again[index], TripletDataset(triplets, tmp_path / "images", resolution=SIZE, seed=3)[index]
        assert all(torch.equal(x[k], y[k]) for k in x)
    # Each epoch visits every line once.
    assert sorted(int(plain[i]["line"]) for i in range(3)) == [1, 2, 3]


def test_curriculum_and_dropout_rates(tmp_path):
    data = write_triplets(tmp_path, 4, real=2)
    triplets = read_triplets(data)
    dataset = TripletDataset(triplets, tmp_path / "images", resolution=SIZE,
                             real_driving_schedule=[[0, 1.0], [10, 0.0]], samples_per_step=2,
                             conditioning_dropout=0.1, seed=0)
    real_lines = {t.line for t in triplets if t.driving == "real"}
    early = [dataset.choose(i)[0] for i in range(0, 2)]            # step 0: p_real = 1
    late = [dataset.choose(i)[0] for i in range(40, 100)]          # step >= 20: p_real = 0
    assert all(triplets[i].line in real_lines for i in early)
    assert not any(triplets[i].line in real_lines for i in late)
    # Step 4 of the linear schedule: p_real = 1 - 4/10 = 0.6. Over 2000 draws the binomial standard deviation
    # is sqrt(0.6 * 0.4 / 2000) = 0.011, so +-0.05 (4.5 sigma) fails for a wrong probability (0.5 or 0.7, or
    # the schedule read at another step), not by chance.
    wide = TripletDataset(triplets, tmp_path / "images", resolution=SIZE, real_driving_schedule=[[0, 1.0], [10, 0.0]],
                          samples_per_step=2000, seed=0)
    middle = np.mean([triplets[wide.choose(i)[0]].line in real_lines for i in range(8000, 10000)])
    assert abs(middle - 0.6) < 0.05, middle
    drops = np.mean([bool(dataset[i]["drop_source"]) for i in range(400)])
    assert 0.05 < drops < 0.16


def test_curriculum_visits_each_line_of_a_pool_once_per_epoch(tmp_path):
    """With a curriculum, every line of a pool is drawn once before any line of it is drawn again (the pools
    themselves are drawn at random, by the schedule). Before: 49 draws over 5 lines gave 4 to 13 per line."""
    data = write_triplets(tmp_path, 5, real=2)
    triplets = read_triplets(data)
    dataset = TripletDataset(triplets, tmp_path / "images", resolution=SIZE,
                             real_driving_schedule=[[0, 0.5], [100, 0.5]], seed=0)
    draws = [dataset.choose(i)[0] for i in range(2000)]
    for pool in dataset.pools:
        seq = [d for d in draws if d in pool]
        assert 0.4 < len(seq) / len(draws) < 0.6  # p = 0.5, sd 0.011 over 2000 draws
        full = len(seq) // len(pool) * len(pool)
        for start in range(0, full, len(pool)):
            assert sorted(seq[start:start + len(pool)]) == sorted(pool), start
        counts = np.bincount(seq, minlength=len(triplets))[pool]
        assert counts.max() - counts.min() <= 1
    # the same sample whatever order the indices are asked in (workers, resume)
    again = TripletDataset(triplets, tmp_path / "images", resolution=SIZE,
                           real_driving_schedule=[[0, 0.5], [100, 0.5]], seed=0)
    assert [again.choose(i)[0] for i in (1999, 3, 1500)] == [draws[1999], draws[3], draws[1500]]


# -- the model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data_file, tmp_path_factory):
    """30 steps on two triplets (no dropout, no flip) with a high learning rate."""
    out = tmp_path_factory.mktemp("overfit")
    trainer = make_trainer(tiny_model_dir, data_file, out, train={"max_steps": 30},
                           loss={"conditioning_dropout": 0.0}, data={"random_flip": 0.0},
                           optim={"learning_rate": 1e-3, "max_grad_norm": None})
    before = {"model": snapshot(trainer.model), "vae": snapshot(trainer.vae),
              "image_encoder": snapshot(trainer.image_encoder)}
    probe = range(8)
    loss_before = trainer.evaluate(probe)
    result = trainer.fit()
    return trainer, before, loss_before, trainer.evaluate(probe), result


def test_overfit_two_triplets_loss_drops(trained):
    trainer, _before, loss_before, loss_after, result = trained
    assert result.step == 30 and len(result.losses) == 30
    assert loss_after < 0.6 * loss_before, (loss_before, loss_after)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_frozen_unchanged_trainable_changed(trained):
    trainer, before, *_ = trained
    for name, module in (("vae", trainer.vae), ("image_encoder", trainer.image_encoder)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
    params = dict(trainer.model.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert all(k in trainable for k in params if k.startswith("unet."))  # the whole UNet
    ref = [k for k in trainable if k.startswith("referencenet.")]
    assert ref and all(".transformer_blocks." in k for k in ref)  # ReferenceNets: transformer blocks only
    assert "referencenet.conv_in.weight" not in trainable
    for key, param in params.items():
        if key in trainable:
            assert not torch.equal(param.detach(), before["model"][key]), f"trainable {key} did not change"
        else:
            assert torch.equal(param.detach(), before["model"][key]), f"frozen {key} changed"


def test_conditioning_dropout_gives_exact_zeros(trained):
    trainer = trained[0]
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            seen[name] = (args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone())
        return hook

    handles = [trainer.model.referencenet.register_forward_pre_hook(grab("source"), with_kwargs=True),
               trainer.model.conditioning_referencenet.register_forward_pre_hook(grab("driving"), with_kwargs=True),
               trainer.model.unet.register_forward_pre_hook(grab("unet"), with_kwargs=True)]
    try:
        batch = torch.utils.data.default_collate([trainer.dataset[0], trainer.dataset[1]])
        batch["drop_source"] = torch.tensor([True, False])
        with torch.no_grad():
            trainer.loss(trainer.prepare_inputs(batch), model=trainer.model)
        trainer.model.release()
    finally:
        for handle in handles:
            handle.remove()
    latents, embeds = seen["source"]
    assert torch.count_nonzero(latents[0]) == 0 and torch.count_nonzero(embeds[0]) == 0
    assert not torch.signbit(latents[0]).any() and not torch.signbit(embeds[0]).any()  # +0.0, not -0.0
    assert torch.count_nonzero(latents[1]) > 0 and torch.count_nonzero(embeds[1]) > 0
    drv_latents, drv_embeds = seen["driving"]
    assert all(torch.count_nonzero(x[i]) > 0 for x in (drv_latents, drv_embeds) for i in (0, 1))
    context = seen["unet"][1]  # [source token, driving token]: the unconditional branch of inference
    assert torch.count_nonzero(context[0, 0]) == 0 and torch.count_nonzero(context[0, 1]) > 0
    assert torch.count_nonzero(context[1, 0]) > 0


def test_exported_folder_loads_in_the_pipeline(trained, tmp_path, face_images, run_kwargs):
    from faceanon_core import FaceAnonPipeline
    from faceanon_core.method.loading import check_model_folder

    trainer = trained[0]
    out = trainer.export(tmp_path / "export")
    assert check_model_folder(out, require_extras=True).ok
    assert json.loads((out / "unet" / "config.json").read_text())["faceanon_routing"] == "as_trained"
    assert json.loads((out / "referencenet" / "config.json").read_text())["_class_name"] == "ReferenceNetModel"
    saved = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.unet.state_dict().items())

    pipe = FaceAnonPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.routing_mode == "as_trained"
    anon = pipe.anonymize(face_images, degree=1.25, **run_kwargs).images
    swap = pipe.swap(face_images[0], face_images[1], **run_kwargs).images
    assert anon.shape == (2, SIZE, SIZE, 3) and swap.shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(anon).all() and np.isfinite(swap).all()

    # The loaded pipeline computes exactly what training optimised (same routing, same attention).
    batch = torch.utils.data.default_collate([trainer.dataset[0]])
    inputs = trainer.prepare_inputs(batch)
    with torch.no_grad():
        trained_pred = trainer.model(inputs["noisy_latents"], inputs["timesteps"], inputs["source_latents"],
                                     inputs["source_embeds"], inputs["driving_latents"], inputs["driving_embeds"])
        trainer.model.release()
        source = pipe.source_states(inputs["source_latents"], inputs["source_embeds"], 0.0)
        driving = pipe.reference_states(pipe.conditioning_referencenet, inputs["driving_latents"],
                                        inputs["driving_embeds"])
        tokens, context = pipe._reference_tokens(source, driving, inputs["source_embeds"], inputs["driving_embeds"],
                                                 1, False, torch.float32)
        pipe.reference_context.begin(tokens)
        try:
            pipe_pred = pipe.unet(inputs["noisy_latents"], inputs["timesteps"], encoder_hidden_states=context).sample
        finally:
            pipe.reference_context.end()
    torch.testing.assert_close(pipe_pred, trained_pred, rtol=1e-4, atol=1e-5)


def test_per_layer_routing_is_recorded(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from faceanon_core import FaceAnonPipeline

    nets = [UNet2DConditionModel.from_pretrained(tiny_model_dir / p) for p in
            ("unet", "referencenet", "conditioning_referencenet")]
    model = FaceAnonTrainModel(*nets, routing="per_layer")
    extras = {name: tiny_model_dir / name for name in ("vae", "image_encoder", "feature_extractor")}
    out = export_folder(model, tmp_path / "per_layer", part_dirs=extras)
    assert FaceAnonPipeline.from_pretrained(out).routing_mode == "per_layer"


def test_init_from_a_unet_folder_checkpointing_epsilon_snr(tiny_model_dir, data_file, tmp_path):
    """SD-style init (all three nets from one UNet), gradient checkpointing gives the same
    gradients, epsilon target with min-SNR weighting and noise offset train."""
    config = tiny_config(tiny_model_dir / "unet", data_file, tmp_path / "run",
                         model={"vae": str(tiny_model_dir / "vae"),
                                "image_encoder": str(tiny_model_dir / "image_encoder"),
                                "feature_extractor": str(tiny_model_dir / "feature_extractor"),
                                "prediction_type": "epsilon", "refnet_trainable": "attention"},
                         loss={"snr_gamma": 5.0, "noise_offset": 0.05})
    trainer = Trainer(config_from_dict(config))
    unet = trainer.model.unet.state_dict()
    for part in ("referencenet", "conditioning_referencenet"):
        assert all(torch.equal(v, unet[k]) for k, v in getattr(trainer.model, part).state_dict().items())
    assert trainer.prediction_type == "epsilon"
    ref = [k for k, p in trainer.model.named_parameters() if p.requires_grad and k.startswith("referencenet.")]
    assert ref and all(".attn1." in k or ".attn2." in k for k in ref)

    batch = torch.utils.data.default_collate([trainer.dataset[0]])
    inputs = trainer.prepare_inputs(batch)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            trainer.model.unet.enable_gradient_checkpointing()
        trainer.model.zero_grad(set_to_none=True)
        trainer.loss(inputs, model=trainer.model).backward()
        trainer.model.release()
        grads.append({k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("referencenet.") for k in grads[0])
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-4, atol=1e-7)
    trainer.model.zero_grad(set_to_none=True)
    losses = trainer.fit(max_steps=2).losses
    assert len(losses) == 2 and np.isfinite(losses).all()
    weights = min_snr_weights(trainer.noise_scheduler.alphas_cumprod, torch.tensor([0, 500, 999]), 5.0, "epsilon")
    assert weights[0] < 1 and weights[-1] == 1


def test_resume_equals_uninterrupted_run(tiny_model_dir, data_file, tmp_path):
    common = dict(train={"max_steps": 4, "gradient_accumulation_steps": 2, "checkpoint_every": 2},
                  loss={"conditioning_dropout": 0.5}, optim={"lr_warmup_steps": 3})
    straight = make_trainer(tiny_model_dir, data_file, tmp_path / "a", **common)
    full = straight.fit()

    first = make_trainer(tiny_model_dir, data_file, tmp_path / "b", **common)
    first.fit(max_steps=2)
    del first
    steps = [json.loads((p / "faceanon_state.json").read_text())["step"] for p in list_checkpoints(tmp_path / "b")]
    assert steps == [2]
    resumed = Trainer(config_from_dict(tiny_config(tiny_model_dir, data_file, tmp_path / "b", **common)),
                      resume="latest")
    assert resumed.step == 2 and resumed.resumed_from.name == "checkpoint-00000002"
    rest = resumed.fit()
    assert rest.step == 4 and rest.losses == full.losses[2:]
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)


def test_export_command_from_a_checkpoint(tiny_model_dir, data_file, tmp_path):
    from faceanon_core import FaceAnonPipeline

    config = tiny_config(tiny_model_dir, data_file, tmp_path / "run", train={"max_steps": 1})
    trainer = Trainer(config_from_dict(config))
    trainer.fit()
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert cli_main(["export", str(tmp_path / "c.json"), "--out", str(tmp_path / "exported")]) == 0
    pipe = FaceAnonPipeline.from_pretrained(tmp_path / "exported")
    expected = trainer.model.referencenet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pipe.referencenet.state_dict().items())


@pytest.mark.slow
def test_accelerate_launch_two_processes(tiny_model_dir, data_file, tmp_path):
    """Two CPU processes (torchrun under `accelerate launch`, gloo): the run equals one
    process with twice the accumulation, checkpoints hold both processes' RNG states,
    validation images and the export are written."""
    config = tiny_config(tiny_model_dir, data_file, tmp_path / "ddp",
                         train={"max_steps": 2, "gradient_accumulation_steps": 2, "checkpoint_every": 1,
                                "export_at_end": True},
                         validation={"data": str(data_file), "images": str(data_file.parent / "images"),
                                     "every": 2, "steps": 2, "num_images": 1})
    (tmp_path / "c.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("ACCELERATE_USE_CPU", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "training", "train", str(tmp_path / "c.yaml")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2
    checkpoint = tmp_path / "ddp" / "checkpoints" / "checkpoint-00000002"
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert json.loads((checkpoint / "faceanon_state.json").read_text())["num_processes"] == 2
    assert (tmp_path / "ddp" / "validation" / "step-00000002.png").is_file()

    single = make_trainer(tiny_model_dir, data_file, tmp_path / "single",
                          train={"max_steps": 2, "gradient_accumulation_steps": 4, "checkpoint_every": 1000})
    single.fit()
    exported = load_file(str(tmp_path / "ddp" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    # Tolerance from the float32 arithmetic. Both runs apply AdamW (lr 1e-4) to the same 4 micro-batch gradients,
    # summed in another order (all-reduce of 2 x 2 vs one process accumulating 4): the sums differ by at most
    # (4 - 1) * u * sum|g_i| (u = 2**-24). Adam's step is lr * m / (sqrt(v) + eps): where |g| >> eps that error
    # passes on relatively (~2e-7 * lr = 2e-11); where gradients nearly cancel (|g| ~ eps = 1e-8) it is amplified
    # by lr / eps, bounded by 2 steps * lr * 3u * sum|g_i| / eps, which reached 1.5e-6 on this tiny model (the
    # old atol=1e-6 failed deterministically). A real fault (the processes seeing wrong or the same data, a
    # missing all-reduce) changes Adam's first step, lr * sign(g), by ~lr = 1e-4 per weight: atol = lr / 10.
    lr = config["optim"]["learning_rate"]
    for key, value in single.model.unet.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=1e-4, atol=lr / 10)


def test_align_data_keeps_conditioning_and_truth_pixel_aligned(tmp_path):
    """In-the-wild triplets -> aligned crops (a stub detector stands in for MTCNN)."""
    from faceanon_core import faces as face_lib

    big = 128
    data = write_triplets(tmp_path / "wild", 2, size=big)
    images = tmp_path / "wild" / "images"
    # The face of every image sits where the template puts it in a 128 px crop, shifted by 8 px.
    landmarks = face_lib.TEMPLATE_5 * big + 8

    class StubDetector:
        calls = 0

        def detect(self, rgb):
            StubDetector.calls += 1
            return face_lib.faces_from_landmarks([landmarks])

    out, skipped = align_dataset(data, images, tmp_path / "aligned", resolution=SIZE, detector=StubDetector())
    assert skipped == [] and StubDetector.calls == 4  # sources and ground truths only
    report = check_dataset(out, tmp_path / "aligned" / "images", resolution=SIZE)
    assert report.ok, report.format()
    first = json.loads(out.read_text().splitlines()[0])
    truth = np.asarray(Image.open(tmp_path / "aligned" / "images" / first["ground_truth"]))
    original = np.asarray(Image.open(images / "p0" / "ground_truth.png"))
    expected = face_lib.extract_crops(original, face_lib.align_faces(face_lib.faces_from_landmarks([landmarks]),
                                                                     crop_size=SIZE)[0])[0]
    assert truth.shape == (SIZE, SIZE, 3) and np.array_equal(truth, expected)
    assert ".gt-ground_truth" in first["conditioning_image"]


def test_cli_train_with_overrides_and_checkpointing(tiny_model_dir, data_file, tmp_path, capsys, caplog):
    """`faceanon-train train` with a YAML file + overrides, gradient checkpointing, and
    `--resume latest` before any checkpoint exists.  (bf16 works on the CPU too, but
    CPU bf16 autocast is far too slow for the test suite.)"""
    config = tiny_config(tiny_model_dir, data_file, tmp_path / "run")
    (tmp_path / "c.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    code = cli_main(["train", str(tmp_path / "c.yaml"), "model.gradient_checkpointing=true", "optim.learning_rate=2e-5",
                     "--max-steps", "2", "--resume", "latest"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and np.isfinite(summary["final_loss"])
    assert "no checkpoint" in caplog.text
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["optim"]["learning_rate"] == 2e-5 and saved["model"]["gradient_checkpointing"] is True
