"""The residual fake score (MATH R2): it starts as the exact teacher and learns the generator's score."""
from __future__ import annotations

import pytest
import torch

from fdistill.build import fake_score_kind, student_networks
from fdistill.teachers import TeacherBundle, labels_conditioner
from fdistill.teachers import mixture as mixture_kind
from fdistill.networks import GaussianMixture, MLPDenoiser, TeacherResidual
from fdistill.objectives import fake_score_loss
from fdistill.scale import teacher_scale

from trainer_utils import fast_config


def _residual(teacher, hidden=64, seed=0):
    torch.manual_seed(seed)
    s = teacher_scale(teacher)
    return TeacherResidual(teacher, MLPDenoiser(dim=teacher.event_shape[0], hidden=hidden, depth=2,
                                                sigma_data=s.sigma_data, data_mean=list(s.mean),
                                                noise_label="relative"))


def test_residual_fake_starts_as_the_teacher_and_trains_only_its_correction():
    teacher = GaussianMixture(torch.tensor([[-2.0, 0.0], [3.0, 1.0]]), stds=[0.5, 0.8], weights=[0.3, 0.7])
    fake = _residual(teacher).train()
    x, sigma = torch.randn(64, 2) * 3, torch.exp(torch.randn(64))
    assert torch.equal(fake(x, sigma), teacher(x, sigma))
    assert not teacher.training and all(not p.requires_grad for p in fake.teacher.parameters())
    x.requires_grad_(True)
    fake(x, sigma).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()  # inputs stay differentiable (objectives need it)
    trainable = {n for n, p in fake.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("correction.") for n in trainable)
    assert len(fake.features(x.detach(), sigma)) == 2  # the correction's taps (discriminator.features=fake)
    with pytest.raises(TypeError, match="MLPDenoiser"):
        TeacherResidual(teacher, torch.nn.Linear(2, 2))


def test_residual_fake_learns_the_score_of_a_shifted_gaussian():
    """Teacher N(0, 1) in 1-D, generator samples N(0.5, 1): DSM on them must move the fake's denoiser to the exact
    one of N(0.5, 1), ``D(x, s) = (x + 0.5 s^2) / (1 + s^2)`` (Tweedie), from the teacher's ``x / (1 + s^2)``."""
    teacher = GaussianMixture(torch.zeros(1, 1), stds=1.0)
    fake = _residual(teacher, hidden=64)
    opt = torch.optim.Adam(fake.correction.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for i in range(600):
        x0 = torch.randn(512, 1, generator=g) + 0.5
        sigma = torch.exp(torch.randn(512, generator=g) * 1.2 - 0.5)
        loss = fake_score_loss(fake, x0, sigma=sigma, noise=torch.randn(512, 1, generator=g), sigma_data=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.linspace(-2.5, 3.5, 61)[:, None]
    for s in (0.3, 1.0, 3.0):
        exact = (x + 0.5 * s**2) / (1 + s**2)
        err = (fake(x, torch.full((61,), s)) - exact).abs().max().item()
        start = (teacher(x, torch.full((61,), s)) - exact).abs().max().item()
        assert err < 0.25 * start, (s, err, start)  # most of the gap to the generator's score is learned


def test_student_networks_pick_the_fake_score_by_teacher(tmp_path):
    cfg = fast_config(tmp_path, "network.fit_steps=2", "network.fake_score=auto")
    teacher = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), stds=0.3)
    bundle = mixture_kind.bundle(teacher)
    gen, fake = student_networks(cfg, bundle, scale=teacher_scale(teacher))
    assert isinstance(gen, MLPDenoiser) and isinstance(fake, TeacherResidual)
    x, sigma = torch.randn(8, 2), torch.ones(8)
    assert torch.equal(fake(x, sigma), teacher(x, sigma))
    cfg.network.fake_score = "copy"
    gen, fake = student_networks(cfg, bundle, scale=teacher_scale(teacher))
    assert isinstance(fake, MLPDenoiser) and torch.equal(fake(x, sigma), gen(x, sigma))
    net_teacher = TeacherBundle("pretrained", MLPDenoiser(dim=2, hidden=8, depth=1), labels_conditioner(0))
    assert fake_score_kind(cfg.network, net_teacher) == "copy"
    cfg.network.fake_score = "auto"
    assert fake_score_kind(cfg.network, net_teacher) == "copy"
    cfg.network.fake_score = "residual"
    with pytest.raises(ValueError, match="analytic teacher"):
        fake_score_kind(cfg.network, net_teacher)


def test_a_run_with_the_residual_fake_score_resumes_exactly(tmp_path):
    """Checkpoints hold the correction (and the frozen teacher's buffers): a run stopped at step 2 and resumed ends
    bit-equal to an uninterrupted one."""
    from safetensors.torch import load_file

    from trainer_utils import run_distill

    common = ["network.fake_score=residual", "objective.divergence=js", "train.checkpoint_every=2",
              "network.fit_steps=10"]
    run_distill(fast_config(tmp_path / "a", "train.steps=4", *common))
    run_distill(fast_config(tmp_path / "b", "train.steps=2", *common))
    run_distill(fast_config(tmp_path / "b", "train.steps=4", "resume=latest", *common))
    fake = load_file(tmp_path / "a/checkpoints/step-4/model_1.safetensors")
    assert any(k.startswith("correction.") for k in fake) and fake["correction.out.1.weight"].abs().max() > 0
    for f in ("model.safetensors", "model_1.safetensors", "model_2.safetensors"):
        a, b = load_file(tmp_path / "a/checkpoints/step-4" / f), load_file(tmp_path / "b/checkpoints/step-4" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
