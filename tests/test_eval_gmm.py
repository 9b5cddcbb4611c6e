"""Gaussian-mixture metrics (MATH §7): mode recall, per-mode mass TV, exact NLL."""
import json
import math

import numpy as np
import pytest
import torch

from eval.gmm import gmm_metrics, load_teacher, main, mode_mass, tv_tolerance
from fdistill.networks.gmm import GaussianMixture

WEIGHTS = [0.1, 0.2, 0.3, 0.4]


def _teacher():
    angles = torch.arange(4) * math.pi / 2
    means = 6 * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, stds=0.5, weights=WEIGHTS)


def test_exact_samples_recall_one_tv_within_tolerance_nll_is_entropy():
    gmm = _teacher()
    n = 20_000
    x = gmm.sample(n, generator=torch.Generator().manual_seed(0))
    for assign in ("responsibility", "nearest", "soft"):
        m = gmm_metrics(x, gmm, assign=assign)
        assert m["mode_recall"] == 1.0 and m["modes_covered"] == 4
        assert m["tv"] <= m["tv_tolerance"] == pytest.approx(tv_tolerance(WEIGHTS, n))
        assert sum(m["mode_mass"]) == pytest.approx(1.0)
    # separated modes: H(p) = H(w) + d/2 log(2 pi e s^2); the MC error of the NLL is std(log p)/sqrt(n)
    w = np.array(WEIGHTS)
    entropy = -(w * np.log(w)).sum() + 0.5 * 2 * math.log(2 * math.pi * math.e * 0.25)
    logp = gmm.log_prob(x.double())
    assert m["nll"] == pytest.approx(-logp.mean().item())
    assert abs(m["nll"] - entropy) < 4 * logp.std().item() / math.sqrt(n)
    assert m["nll_per_dim"] == pytest.approx(m["nll"] / 2)


def test_mixture_missing_a_mode():
    gmm = _teacher()
    n = 20_000
    student = GaussianMixture(gmm.means, stds=0.5, weights=[0.0, 0.2, 0.3, 0.4])  # mode 0 (weight 0.1) dropped
    x = student.sample(n, generator=torch.Generator().manual_seed(1))
    m = gmm_metrics(x, gmm)
    assert m["mode_recall"] == 0.75 and m["modes_covered"] == 3
    # per-mode mass is 0 for the missing mode and w_k / 0.9 elsewhere: TV = 0.1 exactly in expectation
    assert abs(m["tv"] - 0.1) <= m["tv_tolerance"]
    # the student's samples are all typical for the teacher, yet the NLL misses the mode's entropy share
    exact = gmm_metrics(gmm.sample(n, generator=torch.Generator().manual_seed(2)), gmm)
    assert m["nll"] < exact["nll"]
    # a mode holding less than 1/4 of its share counts as missed
    labels = torch.tensor([0] * 24 + [1] * 200 + [2] * 300 + [3] * 476)  # mode 0: 2.4% < 10% / 4
    m = gmm_metrics(gmm.means[labels], gmm)
    assert m["mode_recall"] == 0.75 and mode_mass(gmm.means[labels], gmm)[0].item() == pytest.approx(0.024)


def test_cli_with_teacher_file_and_samples(tmp_path):
    gmm = _teacher()
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"means": gmm.means.tolist(), "stds": 0.5, "weights": WEIGHTS}))
    assert torch.allclose(load_teacher(str(teacher)).weights, gmm.weights)
    assert load_teacher("ring8").num_components == 8  # fdistill.data presets by name
    np.save(tmp_path / "x.npy", gmm.sample(4000, generator=torch.Generator().manual_seed(3)).numpy())
    out = tmp_path / "results.jsonl"
    rows = main(["--samples", str(tmp_path / "x.npy"), "--teacher", str(teacher), "--out", str(out)])
    assert [r["metric"] for r in rows] == ["mode_recall", "tv", "nll", "off_mode", "tv_on_mode"]
    assert rows[0]["value"] == 1.0 and rows[1]["value"] <= rows[1]["tolerance"]
    assert len(out.read_text().splitlines()) == 5


def test_off_mode_fraction_of_exact_samples_is_one_minus_the_quantile():
    """Exact samples of separated modes lie outside their mode's 99 % ellipsoid with probability 1 %: the off-mode
    fraction is binomial(n, 0.01); on-mode mass TV is within the MC tolerance. Also for diagonal stds in 5-D."""
    for gmm in (_teacher(), GaussianMixture(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 20,
                                            torch.tensor([[0.5, 1, 2, 1, 0.3]] * 3), [0.2, 0.3, 0.5])):
        n = 40_000
        m = gmm_metrics(gmm.sample(n, generator=torch.Generator().manual_seed(1)), gmm)
        assert abs(m["off_mode"] - 0.01) < 4 * math.sqrt(0.01 * 0.99 / n)
        assert m["tv_on_mode"] <= m["tv_tolerance"]


def test_on_mode_uses_the_radius_of_the_nearest_mode():
    """A point 2 stds from a mode is on-mode (2-D radius sqrt(9.21) = 3.03 stds), 3.5 stds is off-mode; a bridge
    sample halfway between two modes is off-mode. The on-mode mass counts on-mode samples only."""
    from eval.gmm import on_mode

    gmm = _teacher()  # modes at radius 6, std 0.5
    x = torch.tensor([[6.0 + 1.0, 0.0], [6.0 + 1.75, 0.0], [3.0, 3.0], [0.0, -6.0]])
    on, nearest, _ = on_mode(x, gmm)
    assert on.tolist() == [True, False, False, True]
    assert nearest[[0, 3]].tolist() == [0, 3]
    m = gmm_metrics(x, gmm)
    assert m["off_mode"] == pytest.approx(0.5)
    # on-mode mass: half on mode 0, half on mode 3 against weights 0.1 / 0.2 / 0.3 / 0.4
    assert m["tv_on_mode"] == pytest.approx(0.5 * (0.4 + 0.2 + 0.3 + 0.1))


@pytest.mark.parametrize("dim", [2, 16])
def test_mode_scale_is_one_for_exact_samples_and_reads_a_width_error(dim):
    """MATH §7's mode scale: exact samples score 1 (the truncated chi2_d mean in the denominator), samples pulled
    towards their mode's mean by c = 0.9 score c^2 E[M2 | M2 <= r2 / c^2] over that mean (0.91 in 2-D: the
    exact samples' 1 % outside the radius carry much of their M2), while
    the NLL of the narrowed samples is *lower* than the teacher's own — why the NLL is read with the mode scale."""
    from fdistill.networks import GaussianMixture

    means = torch.zeros(3, dim)
    means[:, 0] = torch.tensor([-20.0, 0.0, 20.0])
    gmm = GaussianMixture(means, torch.tensor([0.5, 1.0, 2.0]), [0.2, 0.3, 0.5])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    x = gmm.sample(n, generator=g)
    m = gmm_metrics(x, gmm)
    assert m["mode_scale"] == pytest.approx(1.0, abs=4 / math.sqrt(n * dim))
    nearest = torch.cdist(x, means).argmin(1)
    narrow = means[nearest] + 0.9 * (x - means[nearest])
    mn = gmm_metrics(narrow, gmm)
    from scipy.stats import chi2

    r2, c = chi2.ppf(0.99, dim), 0.9  # narrowed: c^2 E[M2 | M2 <= r2 / c^2] over the exact truncated mean
    expected = math.sqrt(c**2 * chi2.cdf(r2 / c**2, dim + 2) / chi2.cdf(r2 / c**2, dim)
                         / (chi2.cdf(r2, dim + 2) / chi2.cdf(r2, dim)))
    assert 0.9 <= expected < 0.92 and mn["mode_scale"] == pytest.approx(expected, abs=0.01)
    assert mn["nll"] < m["nll"]


@pytest.mark.parametrize("dim", [2, 16])
def test_mode_profile_is_zero_for_exact_samples_and_reads_the_shape_the_mode_scale_averages_away(dim):
    """MATH §7's mode profile: exact samples score ~0 and modes scaled by c about their means score the closed form
    ``mean_q |c sqrt(chi2_d^-1(q F_d(r2 / c2))) / sqrt(chi2_d^-1(0.99 q)) - 1|`` (c = 0.9 and 1.1); a core 10 % too wide
    with shoulders 10 % too thin keeps the mode scale near 1 while the profile sees both."""
    from scipy.stats import chi2

    from eval.gmm import PROFILE_LEVELS, mode_profile_ratios
    from fdistill.networks import GaussianMixture

    means = torch.zeros(3, dim)
    means[:, 0] = torch.tensor([-20.0, 0.0, 20.0])
    gmm = GaussianMixture(means, torch.tensor([0.5, 1.0, 2.0]), [0.2, 0.3, 0.5])
    n = 40_000
    x = gmm.sample(n, generator=torch.Generator().manual_seed(0))
    exact = gmm_metrics(x, gmm)
    assert exact["mode_profile"] < 0.01
    nearest = torch.cdist(x, means).argmin(1)
    mu, sd = means[nearest], gmm.stds.reshape(3, -1)[nearest]
    r2, q = chi2.ppf(0.99, dim), np.array(PROFILE_LEVELS)
    for c in (0.9, 1.1):
        expected = np.abs(c * np.sqrt(chi2.ppf(q * chi2.cdf(r2 / c**2, dim), dim)) / np.sqrt(chi2.ppf(0.99 * q, dim))
                          - 1).mean()
        assert 0.08 < expected < 0.11
        assert gmm_metrics(mu + c * (x - mu), gmm)["mode_profile"] == pytest.approx(expected, abs=0.01)
    # inner half 10 % wider, outer half 10 % narrower (about the exact median radius): one RMS hides it, the profile not
    m = ((x - mu) / sd).norm(dim=1, keepdim=True)
    median = math.sqrt(chi2.ppf(0.5, dim))
    warped = mu + (x - mu) * torch.where(m < median, 1.1, 0.9).to(x.dtype)
    w = gmm_metrics(warped, gmm)
    ratios = mode_profile_ratios(((warped - mu) / sd).pow(2).sum(1), dim)
    assert w["mode_profile"] > 0.05 and abs(w["mode_scale"] - 1.0) < w["mode_profile"]
    assert ratios[0] > 1.05 and ratios[-1] < 0.95


@pytest.mark.parametrize("dim", [2, 16])
def test_nll_at_the_teachers_width_removes_the_width_term_exactly(dim):
    """MATH §7's NLL at the teacher's width: for separated modes an on-mode sample's NLL is ``-log w_k + ½ log|2 pi
    Sigma_k| + ½ m2``, so the same on-mode samples narrowed or widened about their modes (s = 0.8, 1, 1.2) all score
    ``mean(-log w_k + ½ log|2 pi Sigma_k|) + ½ E[M2 | M2 <= r2]`` once the width term is removed, while their NLL
    differs by ``½ (s^2 - 1) mean m2``."""
    from scipy.stats import chi2

    from eval.gmm import truncated_chi2_mean

    means = torch.zeros(3, dim, dtype=torch.float64)
    means[:, 0] = torch.tensor([-60.0, 0.0, 60.0])
    stds, weights = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.2, 0.3, 0.5])
    gmm = GaussianMixture(means, stds, weights)
    g = torch.Generator().manual_seed(1)
    k = torch.multinomial(weights, 6000, replacement=True, generator=g)
    z = torch.randn(6000, dim, generator=g, dtype=torch.float64)
    z = z[(z**2).sum(1) <= chi2.ppf(0.99, dim) / 1.2**2]  # on-mode at every scale below
    k = k[: len(z)]
    constant = (-weights.log()[k].double() + 0.5 * dim * torch.log(2 * math.pi * stds[k].double() ** 2)).mean()
    expected = float(constant) + 0.5 * truncated_chi2_mean(dim)
    scores = {}
    for s in (0.8, 1.0, 1.2):
        m = gmm_metrics(means[k] + s * stds[k, None].double() * z, gmm)
        assert m["off_mode"] == 0.0
        assert m["nll_teacher_width"] == pytest.approx(expected, rel=1e-6)
        assert m["nll"] - m["nll_teacher_width"] == pytest.approx(
            0.5 * (s**2 * float((z**2).sum(1).mean()) - truncated_chi2_mean(dim)), rel=1e-6)
        scores[s] = m["nll"]
    assert scores[0.8] < scores[1.0] < scores[1.2]
