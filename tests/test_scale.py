"""Scale from the teacher (MATH §0): sigma_data, the mean and the noise-level range come from the teacher, so a mixture,
the same mixture scaled by c and shifted by m train alike."""
import math

import pytest
import torch

from fdistill.networks import GaussianMixture, MLPDenoiser
from fdistill.scale import DataScale, teacher_scale

from trainer_utils import fast_config, run_distill

MEANS = [[1.5, 0.0], [0.0, 1.5], [-1.5, 0.0], [0.0, -1.5]]
WEIGHTS = [0.4, 0.1, 0.4, 0.1]


def _mixture(c=1.0, shift=(0.0, 0.0)):
    means = torch.tensor(MEANS, dtype=torch.float64) * c + torch.tensor(shift, dtype=torch.float64)
    return GaussianMixture(means, 0.15 * c, WEIGHTS)


def test_mixture_scale_is_exact_and_moves_with_the_mixture():
    """sigma_data and the mean match a large Monte-Carlo estimate; scaling by c scales sigma_data and the noise range
    by c, a shift moves the mean only."""
    gmm = _mixture()
    x = gmm.sample(400_000, generator=torch.Generator().manual_seed(0))
    mc = DataScale.from_samples(x, centred=False)
    s = teacher_scale(gmm)
    assert s.sigma_data == pytest.approx(mc.sigma_data, rel=5e-3)
    assert s.mean == pytest.approx(mc.mean, abs=1e-2)
    for c, shift in ((0.25, (0, 0)), (4.0, (0, 0)), (1.0, (3.0, -7.0))):
        t = teacher_scale(_mixture(c, shift))
        assert t.sigma_data == pytest.approx(c * s.sigma_data, rel=1e-12)
        assert (t.sigma_min, t.sigma_max) == pytest.approx((c * s.sigma_min, c * s.sigma_max), rel=1e-12)
        assert t.mean == pytest.approx(tuple(c * m + d for m, d in zip(s.mean, shift)), abs=1e-12)


def test_scale_overrides_and_bad_teachers():
    s = teacher_scale(_mixture()).with_overrides(sigma_data=0.7, sigma_max=3.0)
    assert (s.sigma_data, s.sigma_max) == (0.7, 3.0)
    with pytest.raises(ValueError, match="network.sigma_data"):
        teacher_scale(torch.nn.Linear(2, 2))


def test_mlp_built_for_a_scale_is_equivariant():
    """The same weights built for (c sigma_d, m): ``D_c(m + c x, c sigma) = m + c D_1(x, sigma)`` (MATH §0)."""
    torch.manual_seed(0)
    base = MLPDenoiser(dim=2, hidden=32, depth=2, sigma_data=0.8, data_mean=[0.0, 0.0], noise_label="relative",
                       fourier_features=8)
    c, m = 4.0, torch.tensor([3.0, -1.0])
    moved = MLPDenoiser(dim=2, hidden=32, depth=2, sigma_data=0.8 * c, data_mean=m.tolist(), noise_label="relative",
                        fourier_features=8)
    moved.load_state_dict(base.state_dict())
    x, sigma = torch.randn(64, 2), torch.exp(torch.randn(64))
    torch.testing.assert_close(moved(m + c * x, c * sigma), m + c * base(x, sigma), rtol=1e-5, atol=1e-5)


def _teacher_overrides(c, shift):
    means = [[c * a + shift[0], c * b + shift[1]] for a, b in MEANS]
    return [f"teacher.means={means}", f"teacher.stds={0.15 * c}", f"teacher.weights={WEIGHTS}"]


def _alike(m, base, c) -> bool:
    """Same metrics within what 150 steps of float32 training make of rounding differences (seed-to-seed spread at
    this length is several times larger: off-mode 0.59..0.81 over seeds 0-2). The NLL is compared in the mixture's
    own units: ``log p_c(m + c x) = log p_1(x) - d log c``; its students are at ~13 nats after 150 steps, and rounding
    alone moved the x0.25 copy's by 0.56 nats on one CPU at one thread (2026-12-06; 0.09 for x4, 0.19 shifted), while
    the control with a fixed sigma_data is 9 nats off (and off-mode by 0.53, recall 0.5)."""
    return (abs(m["off_mode"] - base["off_mode"]) < 0.05 and abs(m["tv_on_mode"] - base["tv_on_mode"]) < 0.1
            and m["mode_recall"] == base["mode_recall"] and abs(m["nll"] - 2 * math.log(c) - base["nll"]) < 1.0)


@pytest.mark.slow
def test_scaled_and_shifted_mixtures_train_alike(tmp_path):
    """Short runs on a mixture, on the same mixture scaled by 0.25 and by 4, and shifted, give the same exact metrics.
    The control, the x4 copy with EDM's fixed sigma_data = 0.5, does not: the test fails if sigma_data is not taken
    from the teacher."""
    steps = ["train.steps=150", "network.fit_steps=150", "train.eval_samples=4000"]

    def train(tag, c, shift, *extra):
        return run_distill(fast_config(str(tmp_path / tag), *steps, *_teacher_overrides(c, shift), *extra))

    base = train("x1", 1.0, (0, 0))
    for tag, c, shift in (("x0.25", 0.25, (0, 0)), ("x4", 4.0, (0, 0)), ("shift", 1.0, (5.0, -3.0))):
        m = train(tag, c, shift)
        assert _alike(m, base, c), (tag, m, base)
    assert not _alike(train("x4-fixed", 4.0, (0, 0), "network.sigma_data=0.5"), base, 4.0)


def test_a_teacher_without_a_scale_of_its_own_is_measured_from_its_samples():
    """A denoiser with neither sigma_data nor a noise range: sigma_data and the mean are estimated from its samples
    (here a Gaussian's exact denoiser, N(3, 2^2) per element: sigma_data 2, mean 3)."""

    class Gaussian(torch.nn.Module):
        def forward(self, x, sigma, cond=None):
            s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
            return 3.0 + (x - 3.0) * 4.0 / (4.0 + s2)

    teacher = Gaussian()
    s = teacher_scale(teacher, samples=lambda n: torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 2 + 3)
    assert s.sigma_data == pytest.approx(2.0, rel=0.05) and s.mean == pytest.approx((3.0, 3.0), abs=0.15)
    assert (s.sigma_min, s.sigma_max) == pytest.approx((0.004 * s.sigma_data, 160 * s.sigma_data))
