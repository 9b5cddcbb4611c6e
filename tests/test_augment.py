"""The discriminator's augmentation (fdistill.augment, MATH F3): whole-pixel translation against a per-image
reference, its gradient, its step-seeded draws, the GAN term through it, the config's checks, and a digits run with
it that resumes exactly."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fdistill.augment import Translate, translate
from fdistill.config import ConfigError, load_config
from fdistill.objectives.base import GeneratorObjective
from fdistill.step_random import StepRandom
from trainer_utils import fast_config, run_distill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(x, dx, dy, k):
    """One image at a time: pad by repeating the border, cut the window the shift (dx, dy) looks through."""
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        p = F.pad(x[i:i + 1], (k, k, k, k), mode="replicate")
        out.append(p[..., k - int(dy[i]):k - int(dy[i]) + h, k - int(dx[i]):k - int(dx[i]) + w])
    return torch.cat(out)


def test_translate_moves_each_image_by_its_own_shift():
    x = torch.randn(6, 2, 5, 7)
    dx, dy = torch.tensor([0, 1, -1, 2, -2, 1]), torch.tensor([0, 0, 2, -1, -2, 1])
    y = translate(x, dx, dy, 2)
    assert torch.equal(y, _reference(x, dx, dy, 2))
    assert torch.equal(y[0], x[0])  # no shift: the image itself
    assert torch.equal(y[1, :, :, 1:], x[1, :, :, :-1]) and torch.equal(y[1, :, :, 0], x[1, :, :, 0])  # one right
    assert torch.equal(translate(x, dx, dy, 0), x)  # max_shift 0: off
    with pytest.raises(ValueError, match="needs images"):
        translate(torch.randn(4, 3), dx[:4], dy[:4], 1)


def test_translate_passes_the_gradient_to_the_pixels_it_reads():
    """d sum(T(x)) / dx counts how often each input pixel is read: H x W reads per image in all."""
    x = torch.randn(3, 1, 6, 6, requires_grad=True)
    dx, dy = torch.tensor([1, -2, 0]), torch.tensor([2, 0, 0])
    translate(x, dx, dy, 2).sum().backward()
    assert torch.equal(x.grad.sum((1, 2, 3)), torch.full((3,), 36.0))
    assert torch.equal(x.grad[2], torch.ones(1, 6, 6))  # unshifted: every pixel once
    assert x.grad[0, 0, 0, 0] == 3 * 2  # shifted down 2 and right 1: the corner fills a 3 x 2 block


def test_translate_draws_are_the_steps_own():
    rand = StepRandom(seed=4)
    aug = Translate(rand, 2)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).expand(512, 1, 4, 4).contiguous()
    a, b, c = aug(x, 7, "real0"), aug(x, 7, "real0"), aug(x, 7, "disc0")
    assert torch.equal(a, b) and not torch.equal(a, c)  # the same step and stream draw the same shifts (resume)
    dx = rand.randint(7, "augment/real0/dx", 512, 5) - 2
    assert set(dx.tolist()) == {-2, -1, 0, 1, 2}  # every shift in [-k, k] is drawn
    with pytest.raises(ValueError, match="augment_shift must be >= 0"):
        Translate(rand, -1)


def test_gan_term_reads_the_translated_generator_output():
    class Obj(GeneratorObjective):
        gan_weight = 1.0

    def disc(x, sigma, cond):
        return x.flatten(1)[:, :3].sum(1)

    x0 = torch.randn(4, 1, 5, 5, requires_grad=True)
    sigma, noise = torch.full((4,), 0.5), torch.randn(4, 1, 5, 5)
    shift = torch.tensor([1, 0, -1, 2])
    loss = Obj().gan_term(x0, None, disc, None, sigma, noise, lambda x: translate(x, shift, -shift, 2))
    expected = F.softplus(-disc(translate(x0, shift, -shift, 2) + 0.5 * noise, sigma, None)).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert x0.grad.abs().sum() > 0  # the generator gets its gradient through the translation
    with pytest.raises(ValueError, match="own noise levels"):
        Obj().gan_term(x0, None, disc, disc(x0, sigma, None), None, None, lambda x: x)


def test_config_checks_the_augmentation():
    with pytest.raises(ConfigError, match="augment_shift .*must be >= 0"):
        load_config(None, ["discriminator.augment_shift=-1"])
    with pytest.raises(ConfigError, match="r1_gamma must be >= 0"):
        load_config(None, ["discriminator.r1_gamma=-1"])
    with pytest.raises(ConfigError, match="gan_sigma_max"):
        load_config(None, ["discriminator.augment_shift=1"])
    load_config(None, ["discriminator.augment_shift=1", "objective.gan_weight=0.1", "objective.gan_sigma_max=auto"])


def test_a_mixture_teacher_refuses_the_translation(tmp_path):
    with pytest.raises(ValueError, match="translates images"):
        run_distill(fast_config(tmp_path, "objective.divergence=js", "objective.gan_weight=0.1",
                                "objective.gan_sigma_max=auto", "discriminator.augment_shift=1", "train.steps=1"))


def test_a_digits_run_with_translation_resumes_exactly(tmp_path, tiny_digits_teacher):
    """Two steps of a real-digits run with discriminator.augment_shift=1 from a tiny digits teacher: the run resumed
    at step 1 ends where the run of two steps ends, bit for bit (the shifts are the step's own draws)."""
    from test_trainer import _assert_same_checkpoint

    fast = ["train.warmup_steps=0", "log.progress=false", "log.trackers=[]", "train.batch_size=8"]
    common = [f"teacher.path={tiny_digits_teacher}", "train.fake_updates=1", "train.ema=[0.9]",
              "train.checkpoint_every=1", "objective.divergence=fkl", "objective.gan_sigma_max=auto",
              "discriminator.augment_shift=1", *fast]
    for out, steps, more in (("a", 2, []), ("b", 1, []), ("b", 2, ["resume=latest"])):
        run_distill(load_config(os.path.join(ROOT, "configs/digits.yaml"),
                                [*common, f"out_dir={tmp_path / out}", f"train.steps={steps}", *more]))
    _assert_same_checkpoint(tmp_path / "a/checkpoints/step-2", tmp_path / "b/checkpoints/step-2")
