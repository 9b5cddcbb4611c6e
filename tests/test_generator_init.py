"""network.generator_init: a run whose generator starts from a trained one-step generator (a second training stage),
on a mixture run end to end and on a diffusers UNet generator; the errors that say what does not fit."""
from __future__ import annotations

import json

import pytest
import torch

from fdistill.build import build_gmm_teacher, student_networks
from fdistill.config import ConfigError
from fdistill.networks import DiffusersDenoiser
from fdistill.saved_models import load_generator, one_step_pipeline
from fdistill.scale import teacher_scale
from fdistill.teachers import TeacherBundle, labels_conditioner
from fdistill.teachers import mixture as mixture_kind
from trainer_utils import fast_config, run_distill


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    run_distill(fast_config(out, "train.steps=15"))
    return out


def test_second_stage_continues_the_exported_generator(tmp_path, first_stage, capsys):
    """At a zero generator rate the second stage's generator is the first stage's export, unchanged: the same exact
    metrics from the same sample noise. The warm start is off by default (flow_fit_steps null), since a warm start
    would have moved it."""
    run_distill(fast_config(tmp_path, f"network.generator_init={first_stage}", "network.flow_fit_steps=null",
                            "train.steps=3", "train.lr=0"))
    assert f"the generator starts from {first_stage} (no warm start)" in capsys.readouterr().out
    before = json.loads((first_stage / "final_metrics.json").read_text())
    after = json.loads((tmp_path / "final_metrics.json").read_text())
    for key in ("tv_on_mode", "off_mode", "nll", "mode_recall"):
        assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), key


def _ring8(tmp_path):
    gmm = build_gmm_teacher(fast_config(tmp_path).teacher)
    return mixture_kind.bundle(gmm), teacher_scale(gmm)


def test_generator_init_loads_the_weights_and_leaves_the_fake_score(tmp_path, first_stage):
    teacher, scale = _ring8(tmp_path)
    fresh, fake0 = student_networks(fast_config(tmp_path, "network.fit_steps=2"), teacher, scale=scale)
    gen, fake = student_networks(fast_config(tmp_path, "network.fit_steps=2", f"network.generator_init={first_stage}"),
                                 teacher, scale=scale)
    exported = load_generator(str(first_stage)).denoiser.state_dict()
    for k, v in gen.state_dict().items():
        assert torch.equal(v, exported[k]), k
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in gen.state_dict().items())
    for k, v in fake.state_dict().items():  # the fake score keeps its own start
        assert torch.equal(v, fake0.state_dict()[k]), k


def test_what_does_not_fit_is_named(tmp_path, first_stage):
    teacher, scale = _ring8(tmp_path)
    init = f"network.generator_init={first_stage}"
    with pytest.raises(ValueError, match="trained at sigma_init .* set network.sigma_init"):
        student_networks(fast_config(tmp_path, "network.fit_steps=2", init, "network.sigma_init=3.0"), teacher,
                         scale=scale)
    with pytest.raises(ValueError, match="do not fit the network"):
        student_networks(fast_config(tmp_path, "network.fit_steps=2", init, "network.hidden=32"), teacher, scale=scale)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        student_networks(fast_config(tmp_path, "network.fit_steps=2", f"network.generator_init={tmp_path}"), teacher,
                         scale=scale)
    for warm in ("network.flow_fit_steps=10", "network.flow_fit_per_mode=100"):
        with pytest.raises(ConfigError, match="discard that start"):
            fast_config(tmp_path, init, warm)


def _tiny_unet_teacher():
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    return TeacherBundle("pretrained", DiffusersDenoiser(unet, sched.alphas_cumprod, "v_prediction"),
                         labels_conditioner(0))


def test_a_diffusers_unet_generator_starts_from_its_export(tmp_path):
    """The export of a UNet generator holds the UNet and its scheduler (``pipeline_parts``); the next stage's
    generator, a copy of the teacher, takes its weights; the fake score stays the teacher's copy."""
    teacher = _tiny_unet_teacher()
    cfg = fast_config(tmp_path, "network.sigma_init=2.5")
    gen, _ = student_networks(cfg, teacher)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.01 * torch.randn_like(p))
    one_step_pipeline(gen, 2.5, teacher.sample_shape).save_pretrained(str(tmp_path / "export"))
    cfg.network.generator_init = str(tmp_path / "export")
    gen2, fake2 = student_networks(cfg, teacher)
    assert isinstance(gen2, DiffusersDenoiser)
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 2.5)
    with torch.no_grad():
        assert torch.allclose(gen2(x, sigma), gen(x, sigma), atol=1e-6)
        assert torch.allclose(fake2(x, sigma), teacher.denoiser(x, sigma), atol=1e-6)
