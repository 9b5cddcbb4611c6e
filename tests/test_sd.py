"""Stable Diffusion teachers (teacher.kind=sd): prompts, CFG with the empty prompt, per-rank prompt slices, the
prompt-keeping teacher pool, captioned images through the VAE, LoRA generators, and short distillation runs that
export a prompt-taking OneStepPipeline. Everything is built from tiny random components saved as a local SD
pipeline directory (no download)."""
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from trainer_utils import reset_accelerate, run_distill

PROMPTS = ["a cat", "dog", "red car", "blue sky", "tree", "sun", "cow", "owl"]


def make_sd_dir(root):
    """A Stable Diffusion pipeline directory of tiny random components, laid out as SD1.5 ships it (the tokenizer
    as vocab.json + merges.txt, a PNDM scaled-linear scheduler)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": 2 * len(letters), "<|endoftext|>": 2 * len(letters) + 1})
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 12, "tokenizer_class": "CLIPTokenizer"}))
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=12, projection_dim=16,
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                 pad_token_id=vocab["<|endoftext|>"])).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         norm_num_groups=8, attention_head_dim=4).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
                  sample_size=16).save_pretrained(root / "vae")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The components are tiny: one thread is fastest, and several threads stall badly on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    make_sd_dir(root / "pipe")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return root


def sd_config(root, out_dir, *overrides):
    from fdistill.config import load_config

    return load_config(None, [
        f"out_dir={out_dir}", "teacher.kind=sd", f"teacher.path={root / 'pipe'}", "teacher.guidance_scale=1.75",
        f"data.prompts={root / 'prompts.txt'}", "objective.name=fdistill_js", "network.sigma_init=14.6146",
        "objective.sigma_min=0.0292", "objective.sigma_max=14.6146", "data.pool_size=8", "data.num_steps=3",
        "train.batch_size=4", "train.fake_updates=2", "train.lr=1e-3", "train.lr_fake=1e-3", "train.ema=[0.5]",
        "train.log_every=1", "train.sample_every=100000", "log.trackers=[]", "log.progress=false", *overrides])


def conditioner(root, **kw):
    from fdistill.config import load_config
    from fdistill.sd import PromptConditioner

    cfg = load_config(None, ["teacher.kind=sd", f"teacher.path={root / 'pipe'}", f"data.prompts={root / 'prompts.txt'}",
                             "network.sigma_init=14.6146", "objective.sigma_max=14.6146",
                             *[f"{k}={v}" for k, v in kw.items()]])
    return PromptConditioner.from_config(cfg, "cpu")


# ---------------------------------------------------------------------------------------------- prompts


def test_read_captions_formats(tmp_path):
    from fdistill.sd import read_captions, read_prompts

    (tmp_path / "p.txt").write_text("a  cat\n\n dog \n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a cat", "dog"]
    (tmp_path / "c.jsonl").write_text('{"caption": "x y", "file_name": "i.png"}\n\n{"text": "z"}\n')
    got = read_captions(str(tmp_path / "c.jsonl"))
    assert [c.text for c in got] == ["x y", "z"] and got[0].image == str(tmp_path / "i.png") and got[1].image is None
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b", "a", "sub/c", "nocap"):
        PIL.Image.new("RGB", (20, 12), (40, 80, 120)).save(folder / f"{name}.png")
    (folder / "a.txt").write_text("first of a\nsecond of a\n")
    (folder / "b.txt").write_text("only b")
    (folder / "sub/c.txt").write_text("c\n")
    got = read_captions(str(folder))
    assert [c.text for c in got] == ["first of a", "second of a", "only b", "c"]  # sorted paths, nocap left out
    assert got[0].image == got[1].image == str(folder / "a.png")
    (tmp_path / "bad.jsonl").write_text('{"label": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_captions(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="no prompts"):
        read_captions(str(tmp_path / "nowhere.txt"))


def test_null_condition_is_the_empty_prompt_as_the_pipeline_encodes_it(sd_dir):
    from fdistill.build import guided
    from fdistill.config import load_config
    from fdistill.pipeline import OneStepPipeline
    from fdistill.sd import load_sd_unet

    cond = conditioner(sd_dir)
    teacher = load_sd_unet(str(sd_dir / "pipe"))
    pipe = OneStepPipeline(teacher.unet, scheduler=teacher.scheduler(), sigma_init=14.6146,
                           **cond.pipeline_components())
    with torch.no_grad():
        assert torch.equal(cond.null_cond, pipe.encode_prompt([""]))
        assert torch.equal(cond.embed(torch.tensor([2, 0])), pipe.encode_prompt([PROMPTS[2], PROMPTS[0]]))
    emb = cond.embed(torch.arange(len(PROMPTS)))
    assert all(not torch.allclose(emb[0], emb[i]) for i in range(1, len(PROMPTS)))  # the tokenizer sees the words
    tcfg = load_config(None, ["teacher.guidance_scale=1.75"]).teacher
    cfg_teacher = guided(teacher, tcfg, cond.null_cond)
    assert torch.equal(cfg_teacher.null_cond, cond.null_cond)
    # MATH F2: D_cfg = D_u + w (D_c - D_u), D_u under the empty prompt
    x, s, c = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 5.0]), cond.embed(torch.tensor([1, 3]))
    with torch.no_grad():
        d_c, d_u = teacher(x, s, c), teacher(x, s, cond.null_cond.expand(2, -1, -1))
        torch.testing.assert_close(cfg_teacher(x, s, c), d_u + 1.75 * (d_c - d_u), rtol=1e-5, atol=1e-5)


def test_prompts_are_drawn_per_global_batch_and_sliced_per_rank(sd_dir):
    from fdistill.step_random import StepRandom

    cached, uncached = conditioner(sd_dir), conditioner(sd_dir, **{"data.prompt_cache": 0})
    assert cached._cache is not None and uncached._cache is None
    whole = cached.draw(StepRandom(3, 0, 1), 7, "label/gen", 6)
    parts = [cached.draw(StepRandom(3, r, 3), 7, "label/gen", 2) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    torch.testing.assert_close(uncached.draw(StepRandom(3, 1, 3), 7, "label/gen", 2), parts[1])
    index = StepRandom(3, 0, 1).randint(7, "label/gen", 6, len(PROMPTS))
    assert torch.equal(whole, cached.embed(index))
    assert not torch.equal(whole, cached.draw(StepRandom(3, 0, 1), 8, "label/gen", 6))  # a new step, new prompts


def test_teacher_pool_keeps_each_latents_prompt(sd_dir, tmp_path):
    import samplers
    from fdistill.build import guided
    from fdistill.config import load_config
    from fdistill.sd import PromptTeacherPool, load_sd_unet
    from fdistill.step_random import StepRandom

    cond = conditioner(sd_dir)
    teacher = guided(load_sd_unet(str(sd_dir / "pipe")), load_config(None, ["teacher.guidance_scale=1.75"]).teacher,
                     cond.null_cond)
    rand = StepRandom(0)
    pool = PromptTeacherPool(teacher, (4, 8, 8), rand, cond, 5, "heun", 3, str(tmp_path / "pool.pt"))
    assert pool.x.shape == (5, 4, 8, 8) and pool.prompt.shape == (5,)
    # the first latent is the sampler's output under its own prompt's embedding
    sigmas = samplers.karras_sigmas(3, teacher.denoiser.sigma_min, teacher.denoiser.sigma_max)
    g = rand.generator(0, "teacher-pool")
    index = torch.randint(len(PROMPTS), (5,), generator=g)
    z = torch.randn((5, 4, 8, 8), generator=g) * float(sigmas[0])
    x = samplers.heun(teacher, z, sigmas, cond=cond.embed(index), generator=g)
    assert torch.equal(pool.prompt, index)
    torch.testing.assert_close(pool.x, x)
    # data.pool_cache: the same pool, kept in the shared folder under its key and not in the run's own file
    shared = PromptTeacherPool(teacher, (4, 8, 8), rand, cond, 5, "heun", 3, str(tmp_path / "run" / "pool.pt"),
                               shared_dir=str(tmp_path / "pools"))
    (name,) = os.listdir(tmp_path / "pools")
    assert name.startswith("pool-") and not (tmp_path / "run" / "pool.pt").exists()
    assert torch.equal(shared.x, pool.x) and torch.equal(shared.prompt, pool.prompt)
    x_real, c_real = pool.batch(2, 3)
    assert torch.equal(cond.real_condition(c_real, None), cond.embed(c_real))
    again = PromptTeacherPool(teacher, (4, 8, 8), rand, cond, 5, "heun", 3, str(tmp_path / "pool.pt"))
    assert torch.equal(again.x, pool.x)  # read from the cache
    with torch.no_grad():  # another checkpoint, same prompts and settings: a new pool, not the cached one
        next(teacher.denoiser.parameters()).add_(0.05)
    with pytest.warns(UserWarning, match="another teacher"):
        other = PromptTeacherPool(teacher, (4, 8, 8), rand, cond, 5, "heun", 3, str(tmp_path / "pool.pt"))
    assert not torch.equal(other.x, pool.x)


def test_caption_latents_are_vae_encodings_with_their_captions(sd_dir, tmp_path):
    from fdistill.sd import CaptionLatents
    from fdistill.step_random import StepRandom

    cond = conditioner(sd_dir)
    rng = np.random.default_rng(0)
    for i, text in enumerate(["a cat", "dog\nred car", "sun"]):
        PIL.Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(text)
    src = CaptionLatents(cond, (4, 8, 8), StepRandom(0), str(tmp_path), str(tmp_path / "cache/latents.pt"))
    assert src.latents.shape == (3, 4, 8, 8) and len(src.texts) == 4
    x, c = src.batch(0, 6)
    assert x.shape == (6, 4, 8, 8) and c.shape == (6, 12, 16)
    index = StepRandom(0).randint(0, "real", 6, 4)
    torch.testing.assert_close(c, cond.encode([src.texts[i] for i in index.tolist()]))
    # latents are the VAE posterior's scale: decoding the mean-free sample gives images of the right size
    assert cond.decode(x).shape == (6, 3, 16, 16)
    # an image edited in place is encoded again (the cache is keyed by the files' bytes and the VAE's weights)
    PIL.Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "1.png")
    with pytest.warns(UserWarning, match="another teacher or other settings"):
        edited = CaptionLatents(cond, (4, 8, 8), StepRandom(0), str(tmp_path), str(tmp_path / "cache/latents.pt"))
    assert torch.equal(edited.latents[0], src.latents[0]) and not torch.equal(edited.latents[1], src.latents[1])


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_generator_starts_as_teacher_and_merges_on_export(sd_dir):
    import copy

    from fdistill.saved_models import one_step_pipeline
    from fdistill.sd import add_lora, has_lora, load_sd_unet

    teacher = load_sd_unet(str(sd_dir / "pipe"))
    gen = add_lora(copy.deepcopy(teacher), rank=2)
    trainable = [n for n, p in gen.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x, s, c = torch.randn(2, 4, 8, 8), torch.full((2,), 3.0), torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(gen(x, s, c), teacher(x, s, c))  # B = 0
        for n, p in gen.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        out = gen(x, s, c)
    assert not torch.allclose(out, teacher(x, s, c))
    pipe = one_step_pipeline(gen, 14.6146, (4, 8, 8))
    assert not has_lora(pipe.generator) and has_lora(gen.unet)
    assert not any("lora" in k for k in pipe.generator.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pipe.denoiser(x, s, c), out, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="lora_targets"):
        add_lora(copy.deepcopy(teacher), rank=2, targets=["no_such_layer"])


# ---------------------------------------------------------------------------------------------- distillation


@pytest.mark.parametrize("variant", ["full", "lora-bf16"])
def test_distill_sd_exports_a_prompt_pipeline(sd_dir, tmp_path, variant):
    import fdistill
    from fdistill.run import RunContext
    from fdistill.methods.distill import Distiller

    extra = ["network.lora_rank=2", "network.gradient_checkpointing=true", "train.mixed_precision=bf16"] \
        if variant == "lora-bf16" else []
    cfg = sd_config(sd_dir, tmp_path, "train.steps=2", *extra)
    reset_accelerate()
    job = Distiller(cfg, RunContext(cfg))
    # the discriminator reads the guided teacher's down blocks and mid block under the text condition
    unet = job.raw_teacher.unet
    assert len(job.disc.heads) == len(unet.down_blocks) + 1
    assert torch.equal(job.teacher.null_cond, job.conditioner.null_cond)
    if variant == "lora-bf16":
        assert unet.dtype == job.conditioner.text_encoder.dtype == job.conditioner.vae.dtype == torch.bfloat16
        assert job.gen_u.unet.is_gradient_checkpointing and job.fake_u.unet.is_gradient_checkpointing
        base = {n: p.detach().clone() for n, p in job.gen_u.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in job.gen_u.named_parameters() if p.requires_grad}
    from fdistill.run import train_step

    stats = [train_step(job.ctx, job, i) for i in range(cfg.train.steps)]
    for s in stats:
        for k in ("loss_g", "loss_fake", "loss_disc", "logit_real", "logit_fake"):
            assert torch.isfinite(s[k]), k
        assert float(s["skipped_generator_count"]) == 0
    moved = [n for n, p in job.gen_u.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved
    if variant == "lora-bf16":
        assert all("lora_" in n for n in moved)
        assert all(torch.equal(p, base[n]) for n, p in job.gen_u.named_parameters() if n in base)
    job.export()

    gen = fdistill.load_generator(str(tmp_path))
    assert gen.text_encoder is not None and gen.vae is not None and gen.text_encoder.dtype == torch.float32
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = gen(prompt=["a cat", "dog"], generator=g(), output_type="pt").images
    b = gen(prompt=["a cat", "dog"], generator=g(), output_type="pt").images
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    c = gen(prompt=["red car", "dog"], generator=g(), output_type="pt").images
    assert not torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    # the exported pipeline is the trained EMA generator (adapters merged), and its prompt embeddings are the
    # training ones (up to the bf16 text encoder of a bf16 run). A plain wrapper around the EMA UNet: in a bf16 run
    # the EMA copy carries accelerate's autocast forward.
    from fdistill.networks import DiffusersDenoiser

    ema = job.ema.model(0)
    z, sig = 14.6146 * torch.randn((2, 4, 8, 8), generator=g()), torch.full((2,), 14.6146)
    with torch.no_grad():
        emb = gen.encode_prompt(["a cat", "dog"])
        expected = DiffusersDenoiser(ema.unet, ema.alphas_cumprod, ema.prediction_type)(z, sig, emb)
        torch.testing.assert_close(gen.denoiser(z, sig, emb), expected, rtol=1e-4, atol=1e-4)
    tol = dict(rtol=0.05, atol=0.1) if variant == "lora-bf16" else dict(rtol=0, atol=0)
    torch.testing.assert_close(job.conditioner.embed(torch.tensor([0, 1])), emb, **tol)
    assert (tmp_path / "samples" / "step-000002.png").is_file()


def test_run_resumes_with_the_pool_and_lora(sd_dir, tmp_path):
    """The run driver: checkpoint, resume and export with a LoRA generator and the cached prompt pool."""
    common = ["network.lora_rank=2", "train.checkpoint_every=1"]
    run_distill(sd_config(sd_dir, tmp_path / "a", "train.steps=2", *common))
    run_distill(sd_config(sd_dir, tmp_path / "b", "train.steps=1", *common))
    run_distill(sd_config(sd_dir, tmp_path / "b", "train.steps=2", "resume=latest", *common))
    from safetensors.torch import load_file

    for f in ("model.safetensors", "model_1.safetensors", "model_2.safetensors"):  # generator, fake, heads
        a, b = (load_file(tmp_path / d / "checkpoints/step-2" / f) for d in ("a", "b"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    assert any("lora_" in k for k in load_file(tmp_path / "a/checkpoints/step-2/model.safetensors"))
    assert (tmp_path / "b" / "teacher_pool.pt").is_file()
    assert (tmp_path / "b" / "generator" / "text_encoder").is_dir()


def test_config_errors(sd_dir):
    from fdistill.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.prompts"):
        load_config(None, ["teacher.kind=sd", f"teacher.path={sd_dir / 'pipe'}"])
    with pytest.raises(ConfigError, match="network.init=teacher"):
        load_config(None, ["teacher.kind=sd", f"teacher.path={sd_dir / 'pipe'}", "data.prompts=p.txt",
                           "network.init=random"])
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(None, ["network.lora_rank=-1"])
    from fdistill.sd import check_layout

    with pytest.raises(FileNotFoundError, match="vae/"):
        check_layout(str(sd_dir))
    from fdistill.sd import PromptConditioner

    with pytest.warns(UserWarning) as record:
        PromptConditioner.from_config(load_config(None, ["teacher.kind=sd", f"teacher.path={sd_dir / 'pipe'}",
                                                         f"data.prompts={sd_dir / 'prompts.txt'}",
                                                         "network.sigma_init=80", "objective.sigma_max=80"]), "cpu")
    messages = " ".join(str(w.message) for w in record)
    assert "network.sigma_init=80" in messages and "objective.sigma_max=80" in messages and "14.6146" in messages


def test_shipped_preset_is_the_paper_recipe():
    from fdistill.config import load_config

    cfg = load_config("configs/sd15-fdistill-js.yaml", [])
    assert cfg.teacher.kind == "sd" and cfg.teacher.guidance_scale == 1.75
    assert cfg.train.batch_size == 1024 and cfg.train.fake_updates == 10 and cfg.train.lr == 1e-5
    assert cfg.objective.name == "fdistill_js" and cfg.objective.gan_weight == 1e-3


def test_regression_pairs_and_warm_start_keep_each_pairs_prompt(sd_dir, tmp_path):
    """DMD's regression term for a prompt-conditioned teacher (MATH R1): the pair pool holds (z, prompt index,
    Phi(z, prompt)) — each target is the guided teacher's probability-flow sample under its own prompt — the warm start
    and the term run, and a step's pooled pairs come with their prompts' embeddings."""
    from fdistill.methods.distill import Distiller
    from fdistill.run import RunContext, train_step

    cfg = sd_config(sd_dir, tmp_path, "train.steps=2", "objective.regression_weight=0.25",
                    "objective.regression_sigma=0.5", "objective.regression_pairs=6", "network.flow_fit_steps=2",
                    "network.flow_fit_batch=2")
    reset_accelerate()
    job = Distiller(cfg, RunContext(cfg))
    pool = job.pair_pool
    assert pool.c.shape == (6,) and 0 <= int(pool.c.min()) and int(pool.c.max()) < len(PROMPTS)
    assert pool.c.unique().numel() > 1
    with torch.no_grad():
        again = job.flow.from_noise(pool.z[:2], job.conditioner.embed(pool.c[:2])).float()
        other = job.flow.from_noise(pool.z[:2], job.conditioner.embed((pool.c[:2] + 1) % len(PROMPTS))).float()
    torch.testing.assert_close(again, pool.x[:2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(other, pool.x[:2], atol=1e-3)  # the prompt matters
    z, c, x = pool.batch(job.rand, 0, 4)
    idx = job.rand.randint(0, "regression/pairs", 4, 6)
    torch.testing.assert_close(c, job.conditioner.embed(pool.c[idx]))
    for i in range(cfg.train.steps):
        stats = train_step(job.ctx, job, i)
        assert torch.isfinite(stats["loss_reg"]) and torch.isfinite(stats["loss_g"])
