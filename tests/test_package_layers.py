"""The layers of docs/architecture.md hold: ``samplers`` knows only the Denoiser interface (no import of ``fdistill``
anywhere in it, function-level imports included), ``fdistill`` imports nothing of ``eval`` (evaluation reaches the
loop through the run's ``measures`` hook), every top-level package imports on its own, and building networks
registers nothing as an import side effect (discriminator taps are the networks' own ``features`` or ratio's
built-ins)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(package: str) -> dict[str, set[str]]:
    """``{file: top-level modules it imports}`` for every ``.py`` file of ``package``, at any depth of the code."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                tree = ast.parse(open(path).read(), path)
                mods = set()
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        mods |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        mods.add(node.module.split(".")[0])
                out[os.path.relpath(path, REPO)] = mods
    return out


def test_samplers_import_nothing_of_the_package_above_them():
    offenders = {f: sorted(m & {"fdistill", "eval", "superpose"}) for f, m in imported_modules("samplers").items()
                 if m & {"fdistill", "eval", "superpose"}}
    assert not offenders, offenders


def test_fdistill_imports_nothing_of_eval():
    offenders = {f: sorted(m & {"eval", "superpose"}) for f, m in imported_modules("fdistill").items()
                 if m & {"eval", "superpose"}}
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["samplers", "fdistill", "eval", "superpose"])
def test_each_top_level_package_imports_alone(package):
    code = f"import sys, {package}; print(' '.join(sorted(m for m in ('fdistill', 'eval', 'superpose', 'samplers') " \
           f"if m in sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    if package == "samplers":
        assert r.stdout.split() == ["samplers"]


def test_building_networks_registers_no_taps():
    code = ("import fdistill.ratio as r; n = len(r._TAPS); import fdistill.build, fdistill.methods.distill; "
            "print(n, len(r._TAPS))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    before, after = r.stdout.split()
    assert r.returncode == 0 and before == after, r.stderr[-2000:]


def test_every_denoiser_states_its_sample_shape():
    """The Denoiser interface's ``sample_shape``: what samplers and pipelines read instead of asking the kind."""
    import torch

    from fdistill.data import gmm_preset
    from fdistill.networks import ClassifierFreeGuidance, MLPDenoiser, TeacherResidual
    from fdistill.networks.edm import EDMDenoiser
    from samplers import MultiStepGenerator

    gmm = gmm_preset("ring8")
    mlp = MLPDenoiser(dim=2, hidden=8, depth=1)
    edm = EDMDenoiser(arch="SongUNet", img_resolution=8, img_channels=3,
                      arch_kwargs=dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[]))
    assert gmm.sample_shape == mlp.sample_shape == TeacherResidual(gmm, mlp).sample_shape == (2,)
    assert ClassifierFreeGuidance(edm, 2.0).sample_shape == edm.sample_shape == (3, 8, 8)
    assert MultiStepGenerator(gmm, num_steps=2).sample(3).shape == (3, 2)
    with pytest.raises(TypeError, match="cannot tell the sample shape of Linear"):
        MultiStepGenerator(torch.nn.Linear(2, 2))
