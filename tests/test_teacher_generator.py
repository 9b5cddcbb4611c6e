"""samplers.MultiStepGenerator: a multi-step teacher as a generator (NFE, moments, seeds), and eval.fid --teacher."""
import json
import math

import pytest
import torch

import samplers
from fdistill.networks import GaussianMixture, MLPDenoiser

MEANS = torch.tensor([[1.5, 0.0, 0.5], [-1.5, 1.0, 0.0], [0.0, -1.5, -1.0]])
STDS = torch.tensor([0.6, 0.8, 0.7])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def _moments(means, stds, weights):
    """Exact mean and per-coordinate std of a diagonal Gaussian mixture."""
    w = weights.reshape(-1, *([1] * (means.ndim - 1)))
    s2 = stds.reshape(-1, *([1] * (means.ndim - 1))) ** 2
    mean = (w * means).sum(0)
    return mean, ((w * (means**2 + s2)).sum(0) - mean**2).sqrt()


def test_heun_18_steps_is_35_evaluations_and_matches_the_mixture():
    gmm = GaussianMixture(MEANS, STDS, WEIGHTS)
    mean, std = _moments(MEANS, STDS, WEIGHTS)
    n = 20_000
    gen = samplers.MultiStepGenerator(gmm)
    x = gen.sample(n, seed=0)
    assert gen.nfe == 35 and x.shape == (n, 3) and x.dtype == torch.float32
    # the mixture's own range: EDM's 0.002..80 in units of its sigma_data (scale from the teacher, MATH §0)
    assert (gen.sigma_min, gen.sigma_max) == pytest.approx((0.004 * gmm.sigma_data, 160 * gmm.sigma_data))
    se = std / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < 4 * se).all(), (x.mean(0), mean)
    # Heun with 18 levels inflates the spread by up to ~4.5% (EDM's discretisation, see the unit-Gaussian test);
    # 100 levels bring it within Monte-Carlo tolerance (4 standard errors of the std, plus 0.2% left of the bias).
    assert ((x.std(0) / std - 1).abs() < 0.06).all()
    fine = samplers.MultiStepGenerator(gmm, num_steps=100)
    y = fine.sample(n, seed=1)
    assert fine.nfe == 199
    assert ((y.mean(0) - mean).abs() < 4 * se).all()
    assert ((y.std(0) / std - 1).abs() < 4 / math.sqrt(2 * n) + 0.002).all(), (y.std(0), std)
    euler = samplers.MultiStepGenerator(gmm, "euler", num_steps=10)
    euler.sample(4, seed=0)
    assert euler.nfe == 10


def test_heun_18_discretisation_against_the_exact_ode_map():
    # N(0, 1): the probability-flow ODE maps x(sigma_max) to x(0) = x(sigma_max) / sqrt(1 + sigma_max^2). The starting
    # noise follows the pipeline's convention (CPU generator seeded with the seed), so the same z is reproduced here.
    unit = GaussianMixture(torch.zeros(1, 1), 1.0)
    n = 4000
    z = torch.randn((n, 1), generator=torch.Generator().manual_seed(3))
    exact = z * 80 / math.sqrt(1 + 80**2)
    ratios = {}
    for steps in (18, 50, 100):
        x = samplers.MultiStepGenerator(unit, num_steps=steps).sample(n, seed=3)
        ratios[steps] = float((x / exact).median())
    print("Heun std ratio to the exact ODE map:", ratios)
    assert 1.03 < ratios[18] < 1.06 and 1.002 < ratios[50] < 1.008 and 1.0 < ratios[100] < 1.002


def test_images_are_clamped_and_deterministic_per_seed():
    means = torch.tensor([-0.5, 0.5]).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    gen = samplers.MultiStepGenerator(GaussianMixture(means, 0.3), num_steps=6)
    a, b, c = gen.sample(64, seed=7), gen.sample(64, seed=7), gen.sample(64, seed=8)
    assert a.shape == (64, 1, 4, 4) and gen.nfe == 11
    assert a.min() >= -1 and a.max() <= 1 and (a.abs() == 1).any()  # the wide components reach the clamp
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert gen.to("cpu") is gen and gen.device == torch.device("cpu")


def test_stochastic_sampler_is_deterministic_per_seed():
    gen = samplers.MultiStepGenerator(GaussianMixture(MEANS, STDS, WEIGHTS), "euler_maruyama", num_steps=8)
    a, b = gen.sample(16, seed=2), gen.sample(16, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, gen.sample(16, seed=3))


def test_class_labels_and_errors():
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
    gen = samplers.MultiStepGenerator(net, num_steps=3)
    assert gen.num_classes == 3
    assert torch.equal(gen.sample(5, seed=1), gen.sample(5, seed=1))  # random labels drawn from the seed too
    gen.sample(4, seed=0, cond=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="rows"):
        gen.sample(4, seed=0, cond=[0, 1])
    with pytest.raises(ValueError, match="prompts"):
        gen.sample(2, seed=0, cond="a cat")
    unconditional = samplers.MultiStepGenerator(GaussianMixture(MEANS, STDS), num_steps=3)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, seed=0, cond=[0, 1])
    with pytest.raises(ValueError, match="valid"):
        samplers.MultiStepGenerator(net, "rk4")


def _tiny_unet_teacher(path):
    from fdistill.build import build_network
    from fdistill.config import NetworkConfig
    from fdistill.saved_models import save_denoiser

    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch="unet2d", channels=[8, 16]), (1, 16, 16))
    save_denoiser(net, str(path))
    return net


def test_eval_fid_scores_a_saved_teacher(tmp_path):
    from eval import fid as efid
    from eval.digits_classifier import load_digits_tensor, save_classifier, train_classifier
    from eval.generate import save_pngs
    from fdistill.saved_models import load_denoiser

    net = _tiny_unet_teacher(tmp_path / "teacher")
    gen = samplers.MultiStepGenerator(load_denoiser(str(tmp_path / "teacher")), num_steps=3)
    assert (gen.sigma_min, gen.sigma_max) == (net.sigma_min, net.sigma_max)  # the VP table's own range
    assert gen.num_classes == 0 and gen.shape == (1, 16, 16)
    model, info = train_classifier(steps=30, progress=False)
    save_classifier(model, str(tmp_path / "clf"), info)
    save_pngs(load_digits_tensor(16)[0][:40], str(tmp_path / "real"), 0)
    out = tmp_path / "results.jsonl"
    common = ["--ref-folder", str(tmp_path / "real"), "--features", "digits", "--digits-classifier",
              str(tmp_path / "clf"), "--num-samples", "12", "--batch-size", "6", "--device", "cpu", "--num-workers",
              "0", "--precision-recall", "--out", str(out)]
    rows = efid.main(["score", "--teacher", str(tmp_path / "teacher"), "--num-steps", "3", *common])
    assert [r["metric"] for r in rows] == ["FD-digits", "precision", "recall"]
    assert all(r["nfe"] == 5 and r["sampler"] == "heun" and r["num_steps"] == 3 for r in rows)
    assert math.isfinite(rows[0]["value"]) and rows[0]["n"] == 12
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == rows
    with pytest.raises(SystemExit):
        efid.main(["score", "--teacher", str(tmp_path / "teacher"), "--gen", str(tmp_path), *common])
