"""Teacher bundles (fdistill.teachers): every kind the config accepts has a module, and each bundle answers what the
trainer asks (shape, classes, exact mixture or not, recipe, warm start, scale) for a teacher the test makes."""
from __future__ import annotations

import pytest
import torch

from fdistill import teachers
from fdistill.build import build_network
from fdistill.config import CHOICES, ConfigError, load_config
from fdistill.networks import DiffusersDenoiser, GaussianMixture, MLPDenoiser
from fdistill.scale import DataScale
from fdistill.teachers import mixture as mixture_kind


def test_every_configurable_kind_has_a_module_that_serves_it():
    assert CHOICES["teacher.kind"] == teachers.kinds()
    for kind in teachers.kinds():
        module = teachers.kind_module(kind)
        assert kind in module.KINDS and callable(module.load)
    with pytest.raises(ValueError, match="unknown teacher.kind 'flux'.*gmm"):
        teachers.kind_module("flux")
    with pytest.raises(ConfigError, match="teacher.kind"):
        load_config(None, ["teacher.kind=flux"])


@pytest.mark.parametrize("overrides, needle", [
    (["teacher.path=runs/t"], "teacher.path=runs/t is not read by teacher.kind=gmm"),
    (["teacher.kind=pretrained", "teacher.path=runs/t", "teacher.preset=grid25"], "teacher.preset=grid25"),
    (["teacher.kind=sd", "teacher.path=p", "teacher.num_classes=10"], "teacher.prediction_type"),  # lists what it reads
    (["teacher.kind=edm", "teacher.path=p", "teacher.prediction_type=epsilon"], "teacher.num_classes"),
])
def test_a_teacher_key_the_kind_does_not_read_is_refused(overrides, needle):
    """Every set teacher.* key is read by the chosen kind (its module's KEYS) or refused; keys at their defaults pass."""
    for kind in teachers.kinds():
        assert set(teachers.kind_module(kind).KEYS) <= set(load_config(None, []).teacher)
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)
    assert load_config(None, ["teacher.kind=pretrained", "teacher.path=runs/t", "teacher.preset=ring8"])  # default


def test_mixture_bundle_is_exact_with_the_mixture_recipe():
    cfg = load_config("configs/gmm2d.yaml", ["teacher.preset=grid25"])
    b = teachers.load_teacher(cfg)
    assert b.kind == "gmm" and b.analytic and b.mixture is b.denoiser
    assert b.analytic == getattr(teachers.kind_module(b.kind), "ANALYTIC", False)  # what the config checks read
    assert b.sample_shape == (2,) and b.num_classes == 0 and b.conditioner.null_cond is None
    assert b.recipe == mixture_kind.RECIPE
    assert b.flow_fit_steps == 750 * 25  # 750 x max(8, K): grows with the modes
    assert mixture_kind.bundle(GaussianMixture(torch.zeros(2, 2), 1.0)).flow_fit_steps == 750 * 8
    assert b.scale() == DataScale.from_mixture(b.mixture)
    assert not any(p.requires_grad for p in b.denoiser.parameters())


def test_saved_denoiser_bundle_is_a_frozen_network_with_the_network_recipe(tmp_path):
    net = MLPDenoiser(dim=3, hidden=16, depth=1, num_classes=4, sigma_data=0.8)
    net.save_pretrained(str(tmp_path / "t"))
    cfg = load_config(None, ["teacher.kind=pretrained", f"teacher.path={tmp_path / 't'}", "teacher.num_classes=4"])
    b = teachers.load_teacher(cfg)
    assert b.kind == "pretrained" and not b.analytic and b.mixture is None
    assert b.analytic == getattr(teachers.kind_module(b.kind), "ANALYTIC", False)  # what the config checks read
    assert b.sample_shape == (3,) and b.num_classes == 4 and b.conditioner.null_cond == 4
    assert b.recipe == teachers.NETWORK_RECIPE and b.flow_fit_steps == 0
    assert not b.denoiser.training and not any(p.requires_grad for p in b.denoiser.parameters())
    x, sigma, c = torch.randn(5, 3), torch.full((5,), 0.7), torch.arange(5) % 4
    assert torch.equal(b.denoiser(x, sigma, c), net.eval()(x, sigma, c))
    s = b.scale()  # the network's own sigma_data, EDM's range in its units
    assert s.sigma_data == pytest.approx(0.8) and s.sigma_max == pytest.approx(80 * 0.8 / 0.5)
    with pytest.raises(ConfigError, match="teacher.path"):
        load_config(None, ["teacher.kind=pretrained"])


def test_diffusers_bundle_reads_the_scheduler_table(tmp_path):
    cfg = load_config(None, ["network.arch=unet2d", "network.channels=[8,16]", "network.attention=false"])
    net = build_network(cfg.network, (1, 8, 8))
    net.save_pretrained(str(tmp_path / "u"))
    b = teachers.load_teacher(load_config(None, ["teacher.kind=diffusers", f"teacher.path={tmp_path / 'u'}"]))
    assert isinstance(b.denoiser, DiffusersDenoiser) and b.sample_shape == (1, 8, 8) and not b.analytic
    assert b.analytic == getattr(teachers.kind_module(b.kind), "ANALYTIC", False)  # what the config checks read
    s = b.scale()
    assert (s.sigma_min, s.sigma_max) == pytest.approx((b.denoiser.sigma_min, b.denoiser.sigma_max))
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 3.0)
    assert torch.allclose(b.denoiser(x, sigma), net.eval()(x, sigma))


def test_stable_diffusion_kind_checks_its_config():
    with pytest.raises(ConfigError, match="needs prompts"):
        load_config(None, ["teacher.kind=sd", "teacher.path=somewhere"])
    with pytest.raises(ConfigError, match="network.init=teacher"):
        load_config(None, ["teacher.kind=sd", "teacher.path=somewhere", "data.prompts=p.txt", "network.init=random"])


def test_warm_start_length_per_mode_counts_a_mixtures_modes_and_an_explicit_length_wins():
    """MATH R1's warm start: network.flow_fit_steps if set, else network.flow_fit_per_mode x max(8, K) for a mixture
    of K modes (null: 750), else 0 for networks; a per-mode rate on a network teacher (no modes) is refused."""
    from fdistill.config import ConfigError
    from fdistill.methods.distill import flow_fit_steps

    grid = teachers.load_teacher(load_config("configs/gmm2d.yaml", ["teacher.preset=grid25"]))
    ring = teachers.load_teacher(load_config("configs/gmm2d.yaml", []))
    net = teachers.TeacherBundle(kind="edm", denoiser=torch.nn.Identity(), conditioner=None)

    def steps(bundle, *words):
        return flow_fit_steps(load_config("configs/gmm2d.yaml", list(words)).network, bundle)

    assert steps(grid) == 18750 and steps(ring) == 6000 and steps(net) == 0
    assert steps(grid, "network.flow_fit_per_mode=375") == 9375 and steps(ring, "network.flow_fit_per_mode=375") == 3000
    assert steps(grid, "network.flow_fit_per_mode=375", "network.flow_fit_steps=100") == 100
    assert steps(net, "network.flow_fit_steps=50") == 50
    with pytest.raises(ConfigError, match="flow_fit_per_mode=10 counts a mixture teacher's modes"):
        steps(net, "network.flow_fit_per_mode=10")
    with pytest.raises(ConfigError, match="flow_fit_per_mode must be >= 0"):
        load_config("configs/gmm2d.yaml", ["network.flow_fit_per_mode=-1"])
