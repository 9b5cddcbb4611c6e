"""EDM networks (DDPM++, NCSN++, ADM), ``EDMDenoiser`` and the snapshot converter.

Parameter names, counts and reference outputs below were taken from NVlabs/edm's ``training/networks.py`` (run
outside this repository): the numbers pin our implementation to EDM's, so released checkpoints load and agree.
"""
import math
import pickle
import sys
import textwrap

import pytest
import torch

from fdistill.convert_edm import config_from_edm, convert_snapshot, load_edm, load_snapshot, main
from fdistill.networks.edm import DhariwalUNet, EDMDenoiser, SongUNet

R = 16
TINY = {
    "ddpmpp": ("SongUNet", dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])),
    "ncsnpp": ("SongUNet", dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                                resample_filter=[1, 3, 3, 1], augment_dim=9)),
    "skip": ("SongUNet", dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16],
                              encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1])),
    "adm": ("DhariwalUNet", dict(model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                 augment_dim=9)),
}
LABELS = {"ddpmpp": 10, "ncsnpp": 0, "skip": 0, "adm": 10}


def tiny(name, precond="edm", label_dim=None, precond_kwargs=None, **extra) -> EDMDenoiser:
    arch, kw = TINY[name]
    torch.manual_seed(0)
    return EDMDenoiser(arch=arch, arch_kwargs=dict(kw, **extra), precond=precond, img_resolution=R, img_channels=3,
                       label_dim=LABELS[name] if label_dim is None else label_dim,
                       precond_kwargs=precond_kwargs).eval()


def fill_deterministic(module):
    """Set every weight (and Fourier frequency) from a fixed formula, in state-dict order (same order as EDM)."""
    with torch.no_grad():
        for k, (name, t) in enumerate(module.state_dict().items()):
            if name.endswith("resample_filter"):
                continue
            v = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.37 + k)
            v = v * (0.3 if t.ndim <= 1 else 1.0 / math.sqrt(max(1, t[0].numel())))
            t.copy_(v.reshape(t.shape).float())


def randomize(module, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_networks_build_run_and_backprop(name):
    net = tiny(name)
    randomize(net)
    x = torch.randn(2, 3, R, R, requires_grad=True)
    cond = torch.tensor([1, 4]) if LABELS[name] else None
    out = net(x, torch.tensor([0.5, 20.0]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# EDMPrecond(...) of NVlabs/edm with fill_deterministic weights: out.flatten()[[0, 100, 777, 1535]] and |out| mean.
EDM_REFERENCE = {
    "ddpmpp": [0.08018238842487335, -0.26309892535209656, 0.17166665196418762, -0.012565920129418373],
    "ncsnpp": [-0.07797719538211823, -0.4320598840713501, -0.10330220311880112, -0.0473129078745842],
    "skip": [0.09038377553224564, -0.3086240589618683, 0.09711574018001556, -0.10185621678829193],
    "adm": [-0.16468477249145508, -0.6367324590682983, -0.25760725140571594, -0.16113317012786865],
}
EDM_REFERENCE_ABS_MEAN = {"ddpmpp": 0.1608283668756485, "ncsnpp": 0.13903845846652985, "skip": 0.1485845148563385,
                          "adm": 0.2967044413089752}


@pytest.mark.parametrize("name", list(TINY))
def test_forward_matches_edm_reference_values(name):
    net = tiny(name)
    fill_deterministic(net)
    x = torch.sin(torch.arange(2 * 3 * R * R, dtype=torch.float64) * 0.11).reshape(2, 3, R, R).float()
    aug = torch.cos(torch.arange(18, dtype=torch.float64)).reshape(2, 9).float() if "augment_dim" in TINY[name][1] \
        else None
    cond = torch.tensor([2, 7]) if LABELS[name] else None
    with torch.no_grad():
        out = net(x, torch.tensor([0.7, 6.0]), cond, augment_labels=aug)
    torch.testing.assert_close(out.flatten()[[0, 100, 777, 1535]], torch.tensor(EDM_REFERENCE[name]),
                               atol=2e-5, rtol=1e-4)
    assert out.abs().mean().item() == pytest.approx(EDM_REFERENCE_ABS_MEAN[name], rel=1e-4)


def test_state_dict_names_follow_edm():
    song = tiny("ddpmpp").state_dict()
    shapes = {k: tuple(v.shape) for k, v in song.items()}
    assert shapes["model.map_label.weight"] == (16, 10) and "model.map_label.bias" in shapes
    assert shapes["model.map_layer0.weight"] == (64, 16) and shapes["model.map_layer1.weight"] == (64, 64)
    assert shapes["model.enc.16x16_conv.weight"] == (16, 3, 3, 3)
    assert shapes["model.enc.8x8_down.conv0.resample_filter"] == (1, 1, 2, 2)
    assert shapes["model.enc.8x8_down.skip.weight"] == (16, 16, 1, 1)  # resample_proj: 1x1 projection
    assert shapes["model.enc.8x8_block0.affine.weight"] == (32, 64)  # additive embedding
    assert shapes["model.enc.8x8_block0.qkv.weight"] == (96, 32, 1, 1)
    assert shapes["model.dec.8x8_in0.proj.weight"] == (32, 32, 1, 1) and "model.dec.8x8_in1.norm0.weight" in shapes
    assert shapes["model.dec.16x16_up.conv0.resample_filter"] == (1, 1, 2, 2)
    assert shapes["model.dec.16x16_block1.conv0.weight"] == (16, 32, 3, 3)
    assert shapes["model.dec.16x16_aux_norm.weight"] == (16,)
    assert shapes["model.dec.16x16_aux_conv.weight"] == (3, 16, 3, 3)
    assert "model.dec.16x16_block1.qkv.weight" not in shapes  # attention only at 8x8

    ncsn = tiny("ncsnpp").state_dict()
    assert tuple(ncsn["model.map_noise.freqs"].shape) == (16,)  # Fourier features, channel_mult_noise=2
    assert tuple(ncsn["model.map_augment.weight"].shape) == (32, 9)
    assert tuple(ncsn["model.enc.8x8_aux_residual.weight"].shape) == (16, 3, 3, 3)  # image -> 16 channels, 2x down
    assert tuple(ncsn["model.enc.8x8_aux_residual.resample_filter"].shape) == (1, 1, 4, 4)

    skip = tiny("skip").state_dict()
    assert "model.enc.8x8_aux_down.resample_filter" in skip and "model.enc.8x8_aux_down.weight" not in skip
    assert tuple(skip["model.enc.8x8_aux_skip.weight"].shape) == (16, 3, 1, 1)
    assert "model.dec.16x16_aux_up.resample_filter" in skip and "model.dec.8x8_aux_conv.weight" in skip

    adm = {k: tuple(v.shape) for k, v in tiny("adm").state_dict().items()}
    assert adm["model.map_label.weight"] == (256, 10) and "model.map_label.bias" not in adm
    assert adm["model.map_augment.weight"] == (64, 9)
    assert adm["model.enc.16x16_conv.weight"] == (64, 3, 3, 3)
    assert adm["model.enc.8x8_down.skip.resample_filter"] == (1, 1, 2, 2)  # no projection: filter only
    assert "model.enc.8x8_down.skip.weight" not in adm
    assert adm["model.enc.8x8_block0.affine.weight"] == (256, 256)  # scale and shift
    assert adm["model.dec.8x8_block0.qkv.weight"] == (384, 128, 1, 1)
    assert adm["model.out_norm.weight"] == (64,) and adm["model.out_conv.weight"] == (3, 64, 3, 3)


DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
              resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])


@pytest.mark.parametrize("arch,res,label_dim,kwargs,n_params,n_entries", [
    ("SongUNet", 32, 10, dict(DDPMPP, augment_dim=9, dropout=0.13), 55_735_299, 427),  # cifar10-32x32-cond-vp
    ("SongUNet", 32, 0, dict(NCSNPP, augment_dim=9, dropout=0.13), 56_397_827, 432),  # cifar10-32x32-uncond-ve
    ("SongUNet", 64, 0, dict(DDPMPP, channel_mult=[1, 2, 2, 2], augment_dim=9), 61_805_571, 553),  # ffhq-64x64-vp
    ("SongUNet", 64, 0, dict(NCSNPP, channel_mult=[1, 2, 2, 2], augment_dim=9), 62_761_091, 563),  # afhqv2-64x64-ve
    ("DhariwalUNet", 64, 1000, dict(model_channels=192, channel_mult=[1, 2, 3, 4]), 295_899_267, 553),  # imagenet
])
def test_released_configurations_have_edm_parameter_counts(arch, res, label_dim, kwargs, n_params, n_entries):
    with torch.device("meta"):
        net = EDMDenoiser(arch=arch, arch_kwargs=kwargs, img_resolution=res, img_channels=3, label_dim=label_dim)
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert len(net.state_dict()) == n_entries


def test_constructor_defaults_are_edms():
    with torch.device("meta"):
        song, adm = SongUNet(img_resolution=32, in_channels=3, out_channels=3), \
            DhariwalUNet(img_resolution=32, in_channels=3, out_channels=3)
    assert "32x32_block3" in song.enc and "16x16_block0" in song.enc and "4x4_block0" in song.enc  # [1,2,2,2]
    assert "32x32_block4" not in song.enc and "32x32_block4" in song.dec  # num_blocks=4
    assert "4x4_block2" in adm.enc and "4x4_block3" not in adm.enc and "4x4_block3" in adm.dec  # num_blocks=3
    assert song.enc["16x16_block0"].num_heads == 1 and song.enc["32x32_block0"].num_heads == 0  # attn at 16
    assert song.enc["32x32_block0"].dropout == 0.1 and song.label_dropout == 0
    assert adm.enc["32x32_conv"].out_channels == 192 and adm.enc["4x4_block0"].out_channels == 768  # [1,2,3,4]
    assert adm.enc["32x32_block0"].num_heads == 3  # 192 channels / 64 per head, attention at 32, 16, 8
    with pytest.raises(ValueError, match="encoder_type"):
        SongUNet(img_resolution=16, in_channels=3, out_channels=3, encoder_type="bogus")


# ----------------------------------------------------------------------------------------- EDMDenoiser


def _zero_output_head(net: EDMDenoiser):
    with torch.no_grad():
        for name, p in net.model.named_parameters():
            if "aux_conv" in name or "out_conv" in name:
                p.zero_()


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_zero_network_gives_skip_connection(precond):
    """MATH §0: D = c_skip x + c_out F; with F = 0, D = c_skip x (sigma_d^2/(sigma^2+sigma_d^2) x for EDM)."""
    net = tiny("ddpmpp", precond=precond)
    randomize(net)
    _zero_output_head(net)
    x, sigma = torch.randn(3, 3, R, R), torch.tensor([0.1, 1.0, 50.0])
    c_skip = 0.25 / (sigma**2 + 0.25) if precond == "edm" else torch.ones(3)
    torch.testing.assert_close(net(x, sigma, torch.tensor([0, 1, 2])), c_skip.reshape(-1, 1, 1, 1) * x)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_preconditioning_formulas(precond):
    """D(x, sigma) against MATH §0 / EDM's VP and VE coefficients written out here."""
    net = tiny("ncsnpp", precond=precond)
    randomize(net)
    x, sigma = torch.randn(2, 3, R, R, dtype=torch.float64), torch.tensor([0.3, 7.0], dtype=torch.float64)
    s = sigma.reshape(-1, 1, 1, 1)
    if precond == "edm":
        c_skip, c_out, c_in, c_noise = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt(), \
            sigma.log() / 4
    elif precond == "vp":
        t = ((0.1**2 + 2 * 19.9 * (1 + sigma**2).log()).sqrt() - 0.1) / 19.9
        c_skip, c_out, c_in, c_noise = 1, -s, 1 / (1 + s**2).sqrt(), 999 * t
    else:
        c_skip, c_out, c_in, c_noise = 1, s, 1, (sigma / 2).log()
    with torch.no_grad():
        f = net.model((c_in * x).float(), c_noise.float(), None).double()
        torch.testing.assert_close(net(x, sigma), c_skip * x + c_out * f, atol=1e-4, rtol=1e-5)


def test_class_conditioning_forms():
    net = tiny("ddpmpp")
    randomize(net)
    x, sigma = torch.randn(3, 3, R, R), 2.0
    labels = torch.tensor([0, 3, 9])
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        d_int, d_vec = net(x, sigma, labels), net(x, sigma, one_hot)
        d_none, d_null = net(x, sigma, None), net(x, sigma, torch.full((3,), 10))
    torch.testing.assert_close(d_int, d_vec)
    torch.testing.assert_close(d_none, d_null)  # label == label_dim is "no class" (zero vector)
    assert (d_int - d_none).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class labels"):
        net(x, sigma, torch.tensor([0, 1, 11]))


@pytest.mark.parametrize("name", ["ddpmpp", "adm"])
def test_label_dropout_only_in_training(name):
    net = tiny(name, label_dropout=1.0, dropout=0.0)
    randomize(net)
    x, labels = torch.randn(2, 3, R, R), torch.tensor([1, 2])
    with torch.no_grad():
        cond_eval, uncond = net(x, 1.0, labels), net(x, 1.0, None)
        net.train()
        cond_train = net(x, 1.0, labels)
    assert (cond_eval - uncond).abs().max() > 1e-4
    torch.testing.assert_close(cond_train, uncond)  # every label dropped


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "adm"])
def test_features_are_encoder_taps(name):
    net = tiny(name)
    randomize(net)
    x = torch.randn(2, 3, R, R, requires_grad=True)
    feats = net.features(x, torch.tensor([1.0, 3.0]), torch.tensor([0, 1]) if LABELS[name] else None)
    c0, c1 = (16, 32) if name != "adm" else (64, 128)
    assert [tuple(f.shape) for f in feats] == [(2, c0, 16, 16), (2, c1, 8, 8), (2, c1, 8, 8)]
    sum(f.square().mean() for f in feats).backward()
    assert x.grad.abs().sum() > 0


def test_save_load_roundtrip_exact(tmp_path):
    net = tiny("ncsnpp", precond="vp", precond_kwargs={"beta_d": 19.9, "beta_min": 0.1, "M": 1000})
    randomize(net)
    net.save_pretrained(tmp_path / "teacher")
    assert (tmp_path / "teacher" / "diffusion_pytorch_model.safetensors").exists()
    back = load_edm(str(tmp_path / "teacher"))
    a, b = net.state_dict(), back.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, R, R)
    with torch.no_grad():
        assert torch.equal(net(x, 3.0), back(x, 3.0))
    assert back.config.precond == "vp" and back.config.arch_kwargs["embedding_type"] == "fourier"


def test_load_edm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no converted EDM network"):
        load_edm(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="convert it first"):
        load_edm("edm-cifar10-32x32-cond-vp.pkl")


# ----------------------------------------------------------------------------------------- conversion


def test_config_from_edm_release_kwargs():
    """The init kwargs EDM's train.py gives the released CIFAR-10 DDPM++ model (EDMPrecond, --cond=1)."""
    kwargs = dict(img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet", use_fp16=False,
                  augment_dim=9, dropout=0.13, **DDPMPP)
    cfg = config_from_edm("EDMPrecond", kwargs)
    assert cfg["arch"] == "SongUNet" and cfg["precond"] == "edm" and cfg["label_dim"] == 10
    assert cfg["precond_kwargs"] is None and cfg["sigma_data"] == 0.5
    assert cfg["arch_kwargs"] == dict(augment_dim=9, dropout=0.13, **DDPMPP)
    vp = config_from_edm("VPPrecond", dict(img_resolution=32, img_channels=3, label_dim=0))
    assert vp["arch"] == "SongUNet" and vp["precond_kwargs"] == {"beta_d": 19.9, "beta_min": 0.1, "M": 1000,
                                                                  "epsilon_t": 1e-5}
    assert config_from_edm("EDMPrecond", dict(img_resolution=64, img_channels=3))["arch"] == "DhariwalUNet"
    with pytest.raises(ValueError, match="iDDPMPrecond"):
        config_from_edm("iDDPMPrecond", kwargs)


# A stand-in for EDM's code: the pickle refers to torch_utils.persistence (as EDM snapshots do).
FAKE_PERSISTENCE = '''
import importlib

def rebuild(module, name, state):
    cls = getattr(importlib.import_module(module), name)
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj
'''
FAKE_NETWORKS = '''
import torch
from torch_utils import persistence
from fdistill.networks.edm import SongUNet

class VEPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **kw):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_max=sigma_max, model_type=model_type, **kw)
        self.model = SongUNet(img_resolution, img_channels, img_channels, label_dim=label_dim, **kw)

    def __reduce__(self):
        return persistence.rebuild, (__name__, type(self).__name__, self.__dict__.copy())
'''
_FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "fake_edm_networks")


def _forget_fake_edm(root):
    for m in _FAKE_MODULES:
        sys.modules.pop(m, None)
    while str(root) in sys.path:
        sys.path.remove(str(root))


def test_convert_snapshot(tmp_path, capsys):
    root = tmp_path / "edm"
    (root / "torch_utils").mkdir(parents=True)
    (root / "dnnlib").mkdir()
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "dnnlib" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text(textwrap.dedent(FAKE_PERSISTENCE))
    (root / "fake_edm_networks.py").write_text(textwrap.dedent(FAKE_NETWORKS))
    _, kw = TINY["ncsnpp"]
    sys.path.insert(0, str(root))
    try:
        import fake_edm_networks

        torch.manual_seed(0)
        edm_net = fake_edm_networks.VEPrecond(img_resolution=R, img_channels=3, label_dim=10, sigma_max=100.0, **kw)
        randomize(edm_net)
        snapshot = tmp_path / "network-snapshot.pkl"
        with open(snapshot, "wb") as fh:
            pickle.dump({"ema": edm_net.eval(), "augment_pipe": None}, fh)
    finally:
        _forget_fake_edm(root)

    with pytest.raises(ImportError, match="needs EDM's own code"):
        load_snapshot(str(snapshot))
    try:
        out = tmp_path / "converted"
        with pytest.raises(SystemExit):
            main([str(snapshot), str(out)])  # no EDM code: clean exit with the message
        assert "needs EDM's own code" in capsys.readouterr().err
        main([str(snapshot), str(out), "--edm-path", str(root)])
        assert "SongUNet" in capsys.readouterr().out
    finally:
        _forget_fake_edm(root)

    ours = load_edm(str(out))
    assert ours.config.precond == "ve" and ours.config.label_dim == 10
    assert ours.config.precond_kwargs == {"sigma_min": 0.02, "sigma_max": 100.0}
    assert ours.sigma_max == 100.0 and "use_fp16" not in ours.config.arch_kwargs
    x, sigma, labels = torch.randn(2, 3, R, R), torch.tensor([0.5, 30.0]), torch.tensor([3, 8])
    with torch.no_grad():
        f = edm_net.model(x, (sigma / 2).log(), torch.nn.functional.one_hot(labels, 10).float())
        torch.testing.assert_close(ours(x, sigma, labels), x + sigma.reshape(-1, 1, 1, 1) * f)  # EDM's VEPrecond
    with pytest.raises(FileNotFoundError):
        convert_snapshot(str(tmp_path / "nope.pkl"), str(tmp_path / "y"))
