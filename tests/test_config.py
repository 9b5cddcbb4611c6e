"""Config loading: YAML + overrides, and the errors a user sees for bad input."""
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from fdistill.config import ConfigError, load_config


def test_defaults_equal_shipped_gmm2d_config():
    from omegaconf import OmegaConf

    default = OmegaConf.to_container(load_config(None, []))
    shipped = OmegaConf.to_container(load_config("configs/gmm2d.yaml", []))
    assert default == shipped


def test_every_shipped_config_loads():
    import glob

    files = sorted(glob.glob("configs/*.yaml"))
    assert len(files) >= 6
    for path in files:
        load_config(path, [])


def test_overrides_merge_and_type():
    cfg = load_config("configs/gmm2d.yaml", ["objective.divergence=js", "train.steps=7", "train.ema=[0.9,0.99]"])
    assert cfg.objective.divergence == "js" and cfg.train.steps == 7 and list(cfg.train.ema) == [0.9, 0.99]


@pytest.mark.parametrize("overrides, needle", [
    (["train.stepz=5"], "unknown config key 'train.stepz'"),
    (["train.stepz=5"], "train.steps"),  # suggests the nearest valid key
    (["train.steps=many"], "wrong type for 'train.steps'"),
    (["objective.divergence=kl"], "valid"),
    (["objective.divergence=kl"], "fkl"),
    (["objective.name=nope"], "uni_instruct"),
    (["train.mixed_precision=fp8"], "bf16"),
    (["train.mixed_precision=maybe"], "valid"),
    (["train.fake_sigma=uniform"], "lognormal"),
    (["teacher.kind=pretrained"], "teacher.path"),
    (["train.ema=[1.5]"], "[0, 1)"),
    (["train.ema=[0.9,0.9]"], "must differ"),
    (["objective.name=sim", "objective.alpha=1.2"], "no alpha knob"),  # refused at load, not after the teacher loads
    (["steps"], "key=value"),
])
def test_clear_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_missing_config_file_names_the_path():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("configs/nope.yaml", [])


def test_train_py_reports_config_error_cleanly():
    r = subprocess.run([sys.executable, "train.py", "objective.divergence=bogus"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "error:" in r.stderr and "rkl" in r.stderr and "Traceback" not in r.stderr


def test_bare_no_is_the_no_choice():
    # YAML parses a bare `no` as a boolean; `train.mixed_precision=no` must still mean "no".
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


@pytest.mark.parametrize("name, divergence", [("sim", None), ("sid", "fkl"), ("uni_instruct", "js"), ("sida", None)])
def test_a_preset_builds_the_same_objective_from_a_config_and_from_python(name, divergence):
    """objective.name=sim used to pass validation and fail when built (the config's zero_mean_term default overrode
    the preset's), and sid with fkl kept the zero-mean term from a config but dropped it from Python."""
    from fdistill.objectives import get_objective
    from fdistill.objectives.from_config import build_objective

    words = [f"objective.name={name}"] + ([f"objective.divergence={divergence}"] if divergence else [])
    from_config = build_objective(load_config(None, words).objective)
    from_python = get_objective(name, **({"divergence": divergence} if divergence else {}))
    for attr in ("zero_mean_term", "alpha", "estimator", "gan_weight", "normalize"):
        assert getattr(from_config, attr) == getattr(from_python, attr), attr
    assert from_config.divergence.name == from_python.divergence.name
    assert from_config.zero_mean_term == (name != "sim")


def _state(obj):
    """An objective's whole configuration as plain data (nested objects by class and attributes)."""
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, (tuple, list)):
        return [_state(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {"class": type(obj).__name__, **{k: _state(v) for k, v in vars(obj).items()}}
    return repr(obj)


@pytest.mark.parametrize("name", ["fdistill", "uni_instruct", "dmd", "dmd2", "fdistill_js", "sid", "sida", "sim"])
def test_every_preset_is_the_same_object_from_a_file_overrides_and_python(name, tmp_path):
    from fdistill.objectives import get_objective, names
    from fdistill.objectives.from_config import build_objective

    assert set(names()) == {"fdistill", "uni_instruct", "dmd", "dmd2", "fdistill_js", "sid", "sida", "sim"}
    path = tmp_path / "c.yaml"
    path.write_text(f"objective: {{name: {name}}}\n")
    from_file = build_objective(load_config(str(path), []).objective)
    from_overrides = build_objective(load_config(None, [f"objective.name={name}"]).objective)
    from_python = get_objective(name)
    assert _state(from_file) == _state(from_overrides) == _state(from_python)


@pytest.mark.parametrize("overrides, needle", [
    (["objective.alpha=1.2"], "objective.alpha=1.2 is not an option of objective 'fdistill'"),
    (["objective.alpha=1.2"], "objective.index_range"),  # lists the options fdistill takes
    (["objective.zero_mean_term=false", "objective.name=dmd2"], "zero_mean_term"),
    (["objective.estimator=sim"], "estimator"),
    (["objective.t_max=0.5"], "t_max"),
    (["objective.name=sid", "objective.index_range=[5,900]"], "objective.index_range=[5, 900] is not an option"),
    (["objective.sigma_dist=loguniform", "objective.index_range=[5,900]"], "does not apply"),
    (["objective.name=sid", "objective.sigma_dist=karras", "objective.t_max=0.5"], "karras_ramp"),
    (["objective.flow_shift=3"], "objective.flow_shift=3.0 does not apply to objective.sigma_dist=''"),
    (["objective.sigma_dist=lognormal", "objective.flow_std=2"], "(it shapes flow_time)"),
    (["objective.weighting=sid"], "weighting"),  # fdistill's weightings: dmd | none
    (["objective.name=sim", "objective.estimator=l3"], "expanded"),
    (["objective.gan_weight=0.1", "objective.gan_sigma_max=low"], "expected a positive noise level, \"auto\""),
])
def test_an_option_the_objective_does_not_take_is_refused(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_weighting_estimator_t_max_and_index_range_are_set_from_a_config():
    from fdistill.objectives.from_config import build_objective

    f = build_objective(load_config(None, ["objective.index_range=[10,900]", "objective.weighting=none"]).objective)
    assert f.noise_levels.index_range == (10, 900) and f.weighting == "none"
    u = build_objective(load_config(None, ["objective.name=uni_instruct", "objective.t_max=0.5",
                                           "objective.estimator=sim", "objective.weighting=none"]).objective)
    assert u.noise_levels.t_max == 0.5 and u.estimator == "sim" and u.weighting == "none"
    # the shape keys follow the distribution named in sigma_dist, whichever objective draws from it
    k = build_objective(load_config(None, ["objective.name=sid", "objective.sigma_dist=karras",
                                           "objective.index_range=[3,500]"]).objective)
    assert type(k.noise_levels).__name__ == "KarrasGrid" and k.noise_levels.index_range == (3, 500)
    flow = build_objective(load_config(None, ["objective.sigma_dist=flow_time", "objective.flow_shift=3",
                                              "objective.flow_mean=-0.5", "objective.flow_std=0.8"]).objective)
    assert (flow.noise_levels.mean, flow.noise_levels.std, flow.noise_levels.shift) == (-0.5, 0.8, 3.0)
    # a key set to the value it has by default gives the same object as leaving it out
    same = build_objective(load_config(None, ["objective.name=sid", "objective.normalize=true"]).objective)
    assert _state(same) == _state(build_objective(load_config(None, ["objective.name=sid"]).objective))


def test_teacher_dependent_defaults_resolve_by_teacher_kind_and_keep_explicit_values():
    """data.num_steps, objective.regression_weight and objective.regression_sigma left null take the mixture recipe's
    values for an analytic mixture teacher (70 levels, the regression term through the denoiser, MATH R1b) and the
    cheap ones for a network (18 levels, no regression term); a value the user set is kept."""
    import torch

    from fdistill.networks import GaussianMixture, MLPDenoiser
    from fdistill.student import resolve_teacher_defaults
    from fdistill.teachers import TeacherBundle, labels_conditioner
    from fdistill.teachers import mixture as mixture_kind

    mixture = mixture_kind.bundle(GaussianMixture(torch.zeros(1, 2), 1.0, [1.0]))
    network = TeacherBundle("pretrained", MLPDenoiser(dim=2, hidden=8, depth=1), labels_conditioner(0))
    cfg = load_config("configs/gmm2d.yaml", [])
    assert cfg.data.num_steps is None and cfg.objective.regression_weight is None
    resolve_teacher_defaults(cfg, mixture)
    assert (cfg.data.num_steps, cfg.objective.regression_weight, cfg.objective.regression_sigma) == (70, 0.7, 1.0)
    cfg = load_config("configs/digits.yaml", [])
    resolve_teacher_defaults(cfg, network)
    assert (cfg.data.num_steps, cfg.objective.regression_weight, cfg.objective.regression_sigma) == (18, 0.0, 0.0)
    cfg = load_config("configs/gmm2d.yaml", ["objective.regression_weight=0", "data.num_steps=35"])
    resolve_teacher_defaults(cfg, mixture)
    assert (cfg.data.num_steps, cfg.objective.regression_weight, cfg.objective.regression_sigma) == (35, 0.0, 1.0)
    with pytest.raises(ConfigError, match="num_steps"):
        load_config(None, ["data.num_steps=0"])


def test_readme_options_table_lists_every_accepted_choice():
    """The README's options table is checked against ``CHOICES`` (the one list of accepted values): every
    choice-valued key has a row, and the row names every value it accepts."""
    from fdistill.config import CHOICES

    rows = [line for line in open("README.md") if line.startswith("| `")]
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        row = next((r for r in rows if f"`{key}`" in r.split("|")[1]
                    or (f"`{section}." in r.split("|")[1] and f"`{name}`" in r.split("|")[1])), None)
        assert row is not None, f"README options table: no row for {key}"
        missing = [v for v in valid if v and f"`{v}`" not in row]
        assert not missing, f"README row of {key} does not name {missing}"


@pytest.mark.parametrize("overrides, needle", [
    (["network.channels=[8,16]"], "network.channels=[8, 16] is not read by network.arch=mlp; it reads network.arch, "
                                  "network.hidden"),
    (["network.init=random", "network.arch=unet2d", "network.hidden=64"], "network.hidden=64 is not read by network.arch=unet2d"),
    (["network.init=random", "network.arch=songunet", "network.prediction_type=epsilon"], "network.prediction_type"),
    (["teacher.kind=pretrained", "teacher.path=t", "network.hidden=64"], "copies of the teacher"),
    (["teacher.kind=pretrained", "teacher.path=t", "network.arch=unet2d"], "network.arch=unet2d is not read"),
    (["data.kind=teacher", "data.resolution=8"], "data.resolution=8 is not read by data.kind=teacher"),
    (["data.kind=digits", "data.path=x"], "data.path=x is not read by data.kind=digits"),
    (["data.prompts=p.txt"], "data.prompts=p.txt is not read by data.kind=auto with teacher.kind=gmm"),
    (["data.kind=gmm", "data.pool_size=8"], "data.pool_size=8"),
    (["data.kind=digits", "data.pool_cache=pools"], "data.pool_cache=pools is not read by data.kind=digits"),
])
def test_a_network_or_data_key_that_is_not_read_is_refused(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides", [
    ["network.hidden=64", "network.depth=2", "network.fourier_scale=2"],  # the mixture teacher's MLP
    ["teacher.kind=pretrained", "teacher.path=t", "network.init=random", "network.hidden=64"],
    ["task=teacher", "data.kind=digits", "data.resolution=8", "network.arch=unet2d", "network.channels=[8,16]",
     "network.prediction_type=epsilon"],
    ["network.init=random", "network.arch=songunet", "network.channels=[8,16]", "network.attention=true"],
    ["data.kind=folder", "data.path=x", "data.resolution=32", "data.num_steps=5", "data.sampler=euler"],
    ["data.kind=teacher", "data.pool_size=8", "data.pool_cache=pools"],
    ["teacher.kind=sd", "teacher.path=p", "data.prompts=p.txt", "data.prompt_cache=4"],
])
def test_keys_that_are_read_are_accepted(overrides):
    load_config(None, overrides)


@pytest.mark.parametrize("arch, shape", [("mlp", (3,)), ("unet2d", (1, 8, 8)), ("songunet", (1, 8, 8))])
def test_each_arch_reads_the_keys_it_lists(arch, shape):
    """ARCH_KEYS is what build_network reads: changing any listed key changes what the built network computes."""
    from fdistill.build import build_network
    from fdistill.config import ARCH_KEYS

    changed = {"hidden": 32, "depth": 1, "fourier_features": 8, "fourier_scale": 3.0, "channels": [8, 8],
               "attention": True, "prediction_type": "epsilon"}
    base = ["network.init=random", f"network.arch={arch}"] + ([] if arch == "mlp" else ["network.channels=[8,16]"])
    x, sigma = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)), torch.full((2,), 1.3)

    def output(*extra):
        torch.manual_seed(0)
        net = build_network(load_config(None, base + list(extra)).network, shape).eval()
        with torch.no_grad():
            return net(x, sigma)

    reference = output()
    for key in ARCH_KEYS[arch]:
        value = str(changed[key]).replace(" ", "").replace("True", "true")
        assert not torch.allclose(output(f"network.{key}={value}"), reference), key


def test_the_config_comments_do_not_list_the_choices_again():
    """The accepted values live in CHOICES (or the owning module); a field's comment points there instead of keeping
    a second list that can fall behind (as teacher.kind's once did, without sd)."""
    import inspect

    from fdistill import config

    for key, valid in config.CHOICES.items():
        section, name = key.split(".")
        source = inspect.getsource(type(getattr(config.Config(), section)))
        field_line = next(line for line in source.splitlines() if line.lstrip().startswith(name + ":"))
        assert not [v for v in valid if v and (f" {v} |" in field_line or f"| {v}" in field_line)], field_line


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_lr_decay_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match=re.escape("0 < train.lr_decay_fraction <= 1; got") + r".*" +
                       re.escape(str(fraction))):
        load_config(None, ["train.lr_schedule=wsd", f"train.lr_decay_fraction={fraction}"])


def test_data_pool_size_comes_from_the_budget_unless_set():
    """data.pool_size: null = one pool sample per POOL_REUSE samples the generator makes (steps x batch / 8, rounded
    up to 1024, at most 1 GiB of float32 samples, at least 4096); a set size is kept; a size below 1 is refused."""
    from fdistill.config import POOL_MIN, POOL_REUSE, ConfigError, data_pool_size, load_config

    def size(*overrides, shape=(1, 16, 16)):
        return data_pool_size(load_config(None, ["teacher.kind=gmm", "data.kind=teacher", *overrides]), shape)

    assert POOL_REUSE == 8 and POOL_MIN == 4096
    assert size("train.steps=4000", "train.batch_size=64") == 32768  # 4000 x 64 / 8 = 32000 -> 32768
    assert size("train.steps=4000", "train.batch_size=128") == 64512  # 64000 -> the next multiple of 1024
    assert size("train.steps=10", "train.batch_size=8") == 4096  # the floor
    long_run = ("train.steps=200000", "train.batch_size=2048")  # 51.2 M by the budget: capped at 1 GiB of samples
    assert size(*long_run, shape=(3, 32, 32)) == 2 ** 30 // (4 * 3 * 32 * 32) == 87381
    assert size(*long_run, shape=(4, 64, 64)) == 16384 and size(*long_run, shape=(3, 512, 512)) == 4096
    assert size("train.steps=4000", "data.pool_size=100") == 100
    with pytest.raises(ConfigError, match="data.pool_size must be >= 1"):
        size("data.pool_size=0")


def test_digits_datafree_config_is_the_measured_recipe():
    """configs/digits-datafree.yaml is what bench/digits_students.py ran for the data-free rows with the GAN cap
    (README, issue 24): configs/digits.yaml, data.kind=teacher, forward KL and the command line's overrides; only the
    paths, the checkpoint interval, the pool size (from the budget there) and the cap, ``auto`` for the 1.0 the runs
    named (2 sigma_data of the digits teacher), may differ."""
    from fdistill.objectives.from_config import gan_sigma_cap

    ran = load_config("configs/digits.yaml", [
        "data.kind=teacher", "objective.name=fdistill", "objective.divergence=fkl", "train.batch_size=64",
        "train.lr=2e-5", "train.fake_updates=5", "train.ema=[0.998,0.995,0.99]", "objective.gan_sigma_max=1.0"])
    shipped = load_config("configs/digits-datafree.yaml", [])
    differ = {f"{section}.{k}" for section in ("data", "network", "objective", "train", "teacher", "discriminator")
              for k in ran[section] if ran[section][k] != shipped[section][k]}
    assert differ == {"train.checkpoint_every", "objective.gan_sigma_max"}
    assert gan_sigma_cap(shipped.objective.gan_sigma_max, SimpleNamespace(sigma_data=0.5)) == 1.0
    assert shipped.out_dir != ran.out_dir


def test_digits_staged_config_is_the_measured_recipe():
    """configs/digits-staged.yaml is what bench/digits_students.py --modes staged ran for the GAN-weight-0.4 row
    (README, issue 24, target 3): configs/digits.yaml with the real digits, forward KL, the command line's overrides and
    the data-free export as the generator's start; the GAN cap is ``auto``, which is the 1.0 the runs named for the
    digits teacher (sigma_data 0.5). Only the paths, the step count (the bench's --steps) and the checkpoint interval
    may differ otherwise."""
    from fdistill.objectives.from_config import gan_sigma_cap

    ran = load_config("configs/digits.yaml", [
        "data.kind=digits", "objective.name=fdistill", "objective.divergence=fkl", "train.batch_size=64",
        "train.lr=2e-5", "train.fake_updates=5", "train.ema=[0.998,0.995,0.99]", "objective.gan_sigma_max=1.0",
        "train.keep_checkpoints=10", "objective.gan_weight=0.4", "network.generator_init=runs/x/gen_snapshots/step-1600"])
    shipped = load_config("configs/digits-staged.yaml", [])
    differ = {f"{section}.{k}" for section in ("data", "network", "objective", "train", "teacher", "discriminator")
              for k in ran[section] if ran[section][k] != shipped[section][k]}
    assert differ == {"train.checkpoint_every", "train.keep_checkpoints", "train.steps", "network.generator_init",
                      "objective.gan_sigma_max"}
    assert shipped.train.steps == 1600 and shipped.network.generator_init
    assert gan_sigma_cap(shipped.objective.gan_sigma_max, SimpleNamespace(sigma_data=0.5)) == 1.0


def test_the_two_stage_digits_configs_run_one_after_the_other(tmp_path, tiny_digits_teacher):
    """The README's two-stage commands on a tiny teacher: configs/digits-datafree.yaml for two steps, then
    configs/digits-staged.yaml from its out_dir (network.generator_init) — the GAN cap ``auto`` resolved to
    2 sigma_data of the teacher in the run's resolved config, and the generator's start logged."""
    import os

    from omegaconf import OmegaConf
    from trainer_utils import run_distill

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fast = [f"teacher.path={tiny_digits_teacher}", "train.steps=2", "train.batch_size=8", "train.fake_updates=1",
            "train.ema=[0.9]", "log.progress=false", "log.trackers=[]"]
    first, second = tmp_path / "datafree", tmp_path / "staged"
    # the first stage in this process, the second through train.py's command line
    run_distill(load_config(os.path.join(root, "configs/digits-datafree.yaml"),
                            [f"out_dir={first}", "data.pool_size=8", "data.num_steps=2", "objective.gan_sigma_max=null",
                             *fast]))
    assert OmegaConf.load(first / "resolved_config.yaml").objective.gan_sigma_max is None  # the measured first stage
    done = subprocess.run([sys.executable, "train.py", "--config", "configs/digits-staged.yaml", f"out_dir={second}",
                           f"network.generator_init={first}", *fast], check=True, cwd=root, capture_output=True,
                          text=True)
    assert f"the generator starts from {first}" in done.stdout + done.stderr
    resolved = OmegaConf.load(second / "resolved_config.yaml")
    assert resolved.objective.gan_sigma_max == 1.0 and resolved.data.kind == "digits"
    assert (second / "generator" / "model_index.json").is_file()
