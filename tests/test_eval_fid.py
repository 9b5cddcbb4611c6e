"""eval.fid (MATH §7): Fréchet distance, agreement with clean-fid, generation, statistics, offline Inception."""
import json
import os

import numpy as np
import pytest
import torch
from scipy import linalg

from eval import fid as efid
from eval.digits_classifier import load_digits_tensor, save_classifier, train_classifier
from eval.features import build_features
from eval.generate import chunks, conditions, generate_to_folder, save_pngs
from eval.inception import INCEPTION_FILE, INCEPTION_URL, MissingWeightsError, PYTORCH_FILE, find_inception


def _direct_fd(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_and_is_zero_on_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(500, 12)) * 1.5 + 0.3
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    fd = efid.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(fd, float)
    assert fd == pytest.approx(_direct_fd(mu1, s1, mu2, s2), rel=1e-9)
    assert abs(efid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    # singular covariances (fewer samples than dimensions) stay finite and FD(A, A) ~ 0
    c = rng.normal(size=(5, 12))
    mu, s = c.mean(0), np.cov(c, rowvar=False)
    assert abs(efid.frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)
    with pytest.raises(ValueError):
        efid.frechet_distance(mu1, s1, mu1[:3], s1[:3, :3])


class StandIn:
    """A 'generator': real digits picked by seed (of the class in ``cond`` when given), slightly noised."""

    def __init__(self, noise=0.3):
        self.x, self.y = load_digits_tensor(16)
        self.noise = noise
        self.calls = []

    def sample(self, n, seed=0, cond=None):
        self.calls.append((n, seed, None if cond is None else cond.tolist()))
        g = torch.Generator().manual_seed(seed)
        if cond is None:
            idx = torch.randint(0, len(self.y), (n,), generator=g)
        else:
            idx = torch.stack([torch.nonzero(self.y == c)[torch.randint(0, int((self.y == c).sum()), (1,),
                                                                         generator=g)][0, 0] for c in cond])
        x = self.x[idx] + self.noise * torch.randn(n, 1, 16, 16, generator=g)
        return x.clamp(-1, 1)


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    model, info = train_classifier(steps=60, progress=False)
    save_classifier(model, str(root / "clf"), info)
    x, _ = load_digits_tensor(16)
    save_pngs(x[:80], str(root / "real_a"), 0)
    save_pngs(x[80:160], str(root / "real_b"), 0)
    return root


def test_fid_entry_point_equals_clean_fid(digits_setup):
    from cleanfid import fid as cfid

    root = digits_setup
    fx = build_features("digits", digits_classifier=str(root / "clf"))
    ours = efid.fid_folders(str(root / "real_a"), str(root / "real_b"), features="digits",
                            digits_classifier=str(root / "clf"))
    theirs = cfid.compute_fid(str(root / "real_a"), str(root / "real_b"), mode="clean", custom_feat_extractor=fx.fn,
                              custom_fn_resize=fx.fn_resize, num_workers=0, device=torch.device("cpu"),
                              verbose=False)
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours > 0
    # The extractor carries its network: the classifier whose class head labels the digits (the class histogram).
    x, y = load_digits_tensor(16)
    with torch.no_grad():
        acc = (fx.model(x[:200]).argmax(1) == y[:200]).float().mean().item()
    assert acc > 0.5
    assert abs(efid.fid_folders(str(root / "real_a"), str(root / "real_a"), features="digits",
                                digits_classifier=str(root / "clf"))) < 1e-3


def test_generation_is_sharding_invariant_and_balanced(tmp_path):
    gen = StandIn()
    generate_to_folder(gen, str(tmp_path / "one"), 23, seed=5, batch_size=4, num_classes=10, progress=False)
    for rank in range(3):
        generate_to_folder(gen, str(tmp_path / "three"), 23, seed=5, batch_size=4, num_classes=10, rank=rank,
                           world_size=3, progress=False)
    one, three = sorted(os.listdir(tmp_path / "one")), sorted(os.listdir(tmp_path / "three"))
    assert one == three == [f"{i:06d}.png" for i in range(23)]
    for f in one:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "three" / f).read_bytes()
    assert sum(len(c) for r in range(3) for c in chunks(23, 4, r, 3)) == 23
    assert conditions(range(8, 12), num_classes=10).tolist() == [8, 9, 0, 1]
    assert conditions(range(3), prompts=["a", "b"]) == ["a", "b", "a"]


def test_generator_score_and_repeats_match_clean_fid(digits_setup, tmp_path):
    from cleanfid import fid as cfid

    root = digits_setup
    fx = build_features("digits", digits_classifier=str(root / "clf"))
    ref = efid.reference_from_folder(str(root / "real_a"), fx, verbose=False)
    rows = efid.evaluate_generator(StandIn(), fx, ref, num_samples=40, seeds=[0, 1], batch_size=16,
                                   num_classes=10, save_dir=str(tmp_path / "gen"), with_pr=True,
                                   checkpoint="standin", progress=False, images_seen=1000)
    metrics = [r["metric"] for r in rows]
    assert metrics == ["FD-digits", "precision", "recall"] * 2 + ["FD-digits_min", "FD-digits_mean"]
    assert "FID" not in metrics
    for r in rows:
        assert {"metric", "value", "n", "mode", "features", "seed", "checkpoint"} <= set(r)
        assert r["features"] == "digits" and r["n"] == 40 and r["images_seen"] == 1000
    theirs = cfid.compute_fid(str(tmp_path / "gen" / "seed1"), str(root / "real_a"), mode="clean",
                              custom_feat_extractor=fx.fn, custom_fn_resize=fx.fn_resize, num_workers=0,
                              device=torch.device("cpu"), verbose=False)
    assert rows[3]["value"] == pytest.approx(theirs, rel=1e-5)
    fds = [rows[0]["value"], rows[3]["value"]]
    assert rows[-2]["value"] == pytest.approx(min(fds)) and rows[-1]["value"] == pytest.approx(np.mean(fds))
    with pytest.raises(FileExistsError):  # never mixes stale images into a new evaluation
        efid.evaluate_generator(StandIn(), fx, ref, num_samples=8, seeds=[0], batch_size=8,
                                save_dir=str(tmp_path / "gen"), progress=False)


def test_cli_folder_and_custom_stats(digits_setup, tmp_path):
    root = digits_setup
    common = ["--features", "digits", "--digits-classifier", str(root / "clf"), "--num-workers", "0",
              "--stats-dir", str(tmp_path / "stats"), "--device", "cpu"]
    efid.main(["make-stats", "--name", "Digits16", "--folder", str(root / "real_b")] + common)
    assert os.path.isfile(tmp_path / "stats" / "digits16_clean_digits_custom_na.npz")
    out = tmp_path / "results.jsonl"
    by_folder = efid.main(["--folder", str(root / "real_a"), "--ref-folder", str(root / "real_b"),
                           "--precision-recall", "--out", str(out)] + common)
    by_stats = efid.main(["score", "--folder", str(root / "real_a"), "--ref-stats", "Digits16",
                          "--precision-recall", "--out", str(out)] + common)
    assert by_stats[0]["value"] == pytest.approx(by_folder[0]["value"], rel=1e-9)
    assert by_stats[2]["value"] == pytest.approx(by_folder[2]["value"])  # features stored with the statistics
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["metric"] for line in lines] == ["FD-digits", "precision", "recall"] * 2
    with pytest.raises(FileNotFoundError, match="make-stats"):
        efid.main(["--folder", str(root / "real_a"), "--ref-stats", "nope"] + common)
    with pytest.raises(FileNotFoundError, match="cifar10_clean_digits_train_32.npz"):
        efid.main(["--folder", str(root / "real_a"), "--ref-stats", "cifar10:train:32"] + common)


def test_missing_inception_message_names_file_and_location(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / INCEPTION_FILE
    monkeypatch.setenv("FDISTILL_INCEPTION", str(missing))
    with pytest.raises(MissingWeightsError) as err:
        find_inception("clean")
    msg = str(err.value)
    assert INCEPTION_FILE in msg and str(missing) in msg and INCEPTION_URL in msg and "FDISTILL_INCEPTION" in msg
    # the CLI fails the same way before reading or generating anything (and never switches extractor)
    with pytest.raises(MissingWeightsError, match=str(missing)):
        efid.main(["--folder", str(tmp_path), "--ref-folder", str(tmp_path)])
    monkeypatch.setenv("FDISTILL_INCEPTION_PYTORCH", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "hub" / PYTORCH_FILE)):
        find_inception("legacy_pytorch")


class _FakeLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


class _FakeInception(torch.nn.Module):
    """Same TorchScript surface as inception-2015-12-05.pt (``layers`` and ``forward(x, return_features)``)."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x, return_features: bool = False):
        return self.layers((x - 128) / 128)


def test_local_inception_file_is_used_without_download(tmp_path, monkeypatch):
    monkeypatch.delenv("FDISTILL_INCEPTION", raising=False)
    weights = tmp_path / "my_inception.pt"  # any name: staged under clean-fid's expected name
    torch.jit.script(_FakeInception()).save(str(weights))
    x, _ = load_digits_tensor(16)
    save_pngs(x[:6], str(tmp_path / "a"), 0)
    save_pngs(x[6:12], str(tmp_path / "b"), 0)
    fx = build_features("inception", "clean", inception=str(weights))
    assert fx.metric == "FID" and fx.mode == "clean"
    ab = efid.fid_folders(str(tmp_path / "a"), str(tmp_path / "b"), inception=str(weights))
    assert np.isfinite(ab) and ab > 0
    fx = build_features("inception", "legacy_tensorflow", inception=str(weights))  # resizes inside the network
    feats = efid.folder_features(str(tmp_path / "a"), fx, verbose=False)
    assert feats.shape == (6, 2048) and np.isfinite(feats).all()


def test_cli_generator_path(digits_setup, tmp_path, monkeypatch):
    import fdistill

    root = digits_setup
    seen = {}

    def fake_load_generator(path, device=None):
        seen["path"], seen["device"] = path, device
        return StandIn()

    monkeypatch.setattr(fdistill, "load_generator", fake_load_generator, raising=False)
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    out = tmp_path / "results.jsonl"
    rows = efid.main(["score", "--gen", str(tmp_path / "run"), "--ref-folder", str(root / "real_a"),
                      "--num-samples", "20", "--repeats", "2", "--batch-size", "8", "--num-classes", "10",
                      "--features", "digits", "--digits-classifier", str(root / "clf"), "--num-workers", "0",
                      "--device", "cpu", "--out", str(out), "--images-seen", "4096"])
    assert seen["path"] == str(tmp_path / "run")
    assert [r["metric"] for r in rows] == ["FD-digits", "FD-digits", "FD-digits_min", "FD-digits_mean"]
    assert [r["seed"] for r in rows[:2]] == [0, 1] and rows[2]["seed"] == [0, 1]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == rows and all(r["images_seen"] == 4096 for r in lines)
    assert os.listdir(tmp_path / "tmp") == []  # the generated PNGs were temporary


def test_local_pytorch_inception_state_dict_is_staged_without_download(tmp_path, monkeypatch):
    import cleanfid.inception_pytorch as ip

    from eval.inception import inception_extractor

    with monkeypatch.context() as m:  # a randomly initialised FID-Inception state dict, built offline
        m.setattr(ip, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        state = ip.fid_inception_v3().state_dict()
    torch.save(state, tmp_path / "my_pt_inception.pth")

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    hub = torch.hub.get_dir()
    fn = inception_extractor("legacy_pytorch", path=str(tmp_path / "my_pt_inception.pth"))
    assert torch.hub.get_dir() == hub
    with torch.no_grad():
        feats = fn(torch.rand(1, 3, 299, 299) * 255)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()


def test_class_histogram_from_features_matches_the_classifier(digits_setup):
    from eval.digits_classifier import class_histogram, class_tv, load_classifier

    root = digits_setup
    fx = build_features("digits", digits_classifier=str(root / "clf"))
    model, _ = load_classifier(str(root / "clf"))
    feats = efid.folder_features(str(root / "real_a"), fx, verbose=False)
    hist = class_histogram(feats, model)
    x, _ = load_digits_tensor(16)
    with torch.no_grad():  # the same images straight through the classifier (PNG rounding aside)
        direct = torch.bincount(model(x[:80]).argmax(1), minlength=10).double() / 80
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    assert class_tv(hist, direct.numpy()) <= 2 / 80  # at most a PNG-rounding flip or two
    assert class_tv(hist, hist) == 0.0
    assert class_tv([1, 0], [0, 1]) == 1.0
    with pytest.raises(ValueError, match="different lengths"):
        class_tv([0.5, 0.5], [1 / 3] * 3)
