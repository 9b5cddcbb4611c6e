"""f-divergences (MATH F1): f(1) = 0, convexity, h = f'' r^2 by autograd, h'/h'' by autograd, the alpha family's
limits. Everything is float64 and exact up to rounding; tolerances are rounding-level unless stated."""
import math

import pytest
import torch

from fdistill import divergences

f64 = torch.float64
R = torch.logspace(-2, 2, 401, dtype=f64)  # r in [0.01, 100]
ALL = divergences.names() + ["alpha:0.5", "alpha:2", "alpha:-1", "alpha:0", "alpha:1", "alpha:0.3", "alpha:-2.5",
                             "alpha:3"]


def _d(fn, r, order):
    """Elementwise derivative by autograd (independent of the package's helper)."""
    r = r.clone().requires_grad_(True)
    out = fn(r)
    for _ in range(order):
        if not out.requires_grad:  # the previous derivative was constant
            return torch.zeros_like(r).detach()
        (out,) = torch.autograd.grad(out.sum(), r, create_graph=True)
    return out.detach()


def test_names_and_unknown():
    assert divergences.names() == ["rkl", "srkl", "js", "sh", "fkl", "jeffreys", "pearson", "neyman"]
    assert divergences.get("alpha:0.5").name == "alpha:0.5"
    assert divergences.get(divergences.get("js")).name == "js"
    with pytest.raises(ValueError, match="valid:.*rkl.*alpha:<a>"):
        divergences.get("kl")
    with pytest.raises(ValueError, match="alpha"):
        divergences.get("alpha:x")


@pytest.mark.parametrize("name", ALL)
def test_f_of_one_convex_and_h(name):
    d = divergences.get(name)
    assert abs(d.f(torch.ones(1, dtype=f64)).item()) < 1e-15
    f2 = _d(d.f, R, 2)
    assert (f2 > 0).all(), "f must be strictly convex"
    h = d.h(R)
    torch.testing.assert_close(h, f2 * R**2, rtol=1e-10, atol=1e-12)  # MATH F1: h = f'' r^2 (constants included)
    # h' and h'' by the package's autograd helper versus an independent autograd
    torch.testing.assert_close(d.h_prime(R), _d(d.h, R, 1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.h_second(R), _d(d.h, R, 2), rtol=1e-10, atol=1e-12)


def test_h_table_values():
    """The closed forms of the MATH F1 table at one point (r = 3)."""
    r = torch.tensor([3.0], dtype=f64)
    want = {"rkl": 1, "srkl": 1 / 4, "js": 3 / 4, "sh": math.sqrt(3) / 4, "fkl": 3, "jeffreys": 4, "pearson": 18,
            "neyman": 2 / 3}
    for name, v in want.items():
        assert abs(divergences.get(name).h(r).item() - v) < 1e-14, name
    assert divergences.get("rkl").constant_h and divergences.get("alpha:0").constant_h
    assert not any(divergences.get(n).constant_h for n in divergences.names() if n != "rkl")


def test_pickles_by_name():
    import pickle

    d = pickle.loads(pickle.dumps(divergences.get("alpha:0.5")))
    assert d.name == "alpha:0.5" and d.h(torch.tensor([4.0])).item() == 2.0


def test_h_prime_differentiable_through_r():
    """Uni-Instruct (MATH U2) differentiates r h'(r) through r(x): h' must keep the graph."""
    d = divergences.get("js")
    r = torch.tensor([0.5, 2.0], dtype=f64, requires_grad=True)
    (g,) = torch.autograd.grad(d.h_prime(r).sum(), r)
    torch.testing.assert_close(g, -2 / (r.detach() + 1) ** 3)  # h'' of js


@pytest.mark.parametrize("a, named, scale, linear", [
    (0.0, "rkl", 1.0, 1.0),       # alpha:0   = rkl + (r - 1)
    (1.0, "fkl", 1.0, -1.0),      # alpha:1   = fkl - (r - 1)
    (0.5, "sh", 4.0, 2.0),        # alpha:1/2 = 4 sh + 2 (r - 1)
    (2.0, "pearson", 0.5, 0.0),   # alpha:2   = pearson / 2
    (-1.0, "neyman", 0.5, 0.0),   # alpha:-1  = neyman / 2
])
def test_alpha_special_values(a, named, scale, linear):
    """f_alpha = scale * f_named + linear * (r - 1), hence h_alpha = scale * h_named (MATH F1 'up to constants')."""
    fa, fn = divergences.get(f"alpha:{a}"), divergences.get(named)
    torch.testing.assert_close(fa.f(R), scale * fn.f(R) + linear * (R - 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fa.h(R), scale * fn.h(R), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a0, limit", [(0.0, "alpha:0"), (1.0, "alpha:1")])
def test_alpha_limits(a0, limit):
    """The general formula tends to the limit forms used at a = 0, 1, linearly in eps = a - a0. First-order
    expansion: relative gap ~ |eps| (log(r)^2 / 2 + 1) <= 1.2e-3 at |eps| = 1e-4 on r in [0.01, 100]; we require
    < 2e-3, and a ten times smaller eps must shrink the gap about ten times (8x to 12x)."""
    lim = divergences.get(limit).f(R)
    keep = lim.abs() > 1e-12  # r = 1 is exactly 0 in both

    def gap(eps):
        a = a0 + eps
        general = (R**a - a * R - (1 - a)) / (a * (a - 1))
        return ((general - lim).abs()[keep] / lim.abs()[keep]).max().item()

    for eps in (1e-4, -1e-4):
        assert gap(eps) < 2e-3
        assert 8 < gap(eps) / gap(eps / 10) < 12
