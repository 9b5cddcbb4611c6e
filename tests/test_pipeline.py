"""OneStepPipeline: G(z) = D_gen(sigma_init z, sigma_init, cond) (MATH §0) as a diffusers pipeline users ship."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from fdistill.networks.diffusers_adapter import DiffusersDenoiser
from fdistill.networks.edm import EDMDenoiser
from fdistill.networks.mlp import MLPDenoiser
from fdistill.pipeline import OneStepPipeline


def _randomize(module, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def mlp_pipe():
    torch.manual_seed(0)
    return OneStepPipeline(generator=_randomize(MLPDenoiser(dim=2, hidden=32, depth=2, num_classes=3)), sigma_init=2.5)


def edm_pipe():
    torch.manual_seed(0)
    net = EDMDenoiser(arch="SongUNet", img_resolution=16, img_channels=3, label_dim=10,
                      arch_kwargs=dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]))
    return OneStepPipeline(generator=_randomize(net), sigma_init=80.0)  # left in train mode (dropout 0.1)


def unet_pipe():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    return OneStepPipeline(generator=_randomize(unet), scheduler=DDPMScheduler(prediction_type="v_prediction"),
                           sigma_init=80.0)


RELOAD_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[2]))
    from fdistill import OneStepPipeline
    out = {}
    for name in ("mlp", "edm", "unet"):
        pipe = OneStepPipeline.from_pretrained(f"{sys.argv[1]}/{name}").to("cpu")
        out[name] = pipe.sample(4, seed=123)
        out[name + "_call"] = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), output_type="pt").images
        out[name + "_config"] = dict(pipe.config)
    torch.save(out, f"{sys.argv[1]}/reloaded.pt")
""")


def test_save_and_reload_in_new_process_gives_same_samples(tmp_path):
    expected = {}
    for name, make in (("mlp", mlp_pipe), ("edm", edm_pipe), ("unet", unet_pipe)):
        pipe = make()
        pipe.save_pretrained(tmp_path / name)
        expected[name] = pipe.sample(4, seed=123)
        expected[name + "_call"] = pipe(batch_size=3, generator=torch.Generator().manual_seed(7),
                                        output_type="pt").images
        expected[name + "_config"] = dict(pipe.config)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path), str(torch.get_num_threads())], check=True,
                   env=env, timeout=300)
    got = torch.load(tmp_path / "reloaded.pt")
    # Same weights, same seed, same noise: the images agree to float32 round-off. Not bit-for-bit: oneDNN may pick a
    # different convolution algorithm in a new process under load (seen once for the EDM case), which reorders sums.
    for name in ("mlp", "edm", "unet"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(got[name + "_call"], expected[name + "_call"], rtol=1e-5, atol=1e-6, msg=name)
        for key in ("sigma_init", "sample_shape", "num_classes"):
            assert got[name + "_config"][key] == expected[name + "_config"][key]
    assert expected["edm"].shape == (4, 3, 16, 16) and expected["unet"].shape == (4, 3, 8, 8)
    assert expected["mlp"].shape == (4, 2)


def test_sample_is_the_one_step_generator():
    """MATH §0: sample(n, seed, cond) = D(sigma_init z, sigma_init, cond), z from the seed (vectors raw)."""
    pipe = mlp_pipe()
    labels = torch.tensor([0, 2, 1])
    z = randn_tensor((3, 2), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = pipe.generator(2.5 * z, torch.full((3,), 2.5), labels)
    torch.testing.assert_close(pipe.sample(3, seed=5, cond=labels), expected)
    assert pipe.config.num_classes == 3 and pipe.config.sample_shape == [2]


def test_image_samples_in_range_and_decoded_unet():
    pipe = unet_pipe()
    x = pipe.sample(2, seed=1)
    assert x.min() >= -1 and x.max() <= 1
    den = DiffusersDenoiser(pipe.generator, pipe.scheduler.alphas_cumprod, "v_prediction")
    z = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = den(80.0 * z, torch.full((2,), 80.0)).clamp(-1, 1)
    torch.testing.assert_close(x, expected)


def test_output_types():
    pipe = edm_pipe()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pil = pipe(class_labels=[1, 2], num_images_per_prompt=2, generator=gen()).images
    assert len(pil) == 4 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    arr = pipe(class_labels=[1, 2], num_images_per_prompt=2, generator=gen(), output_type="np").images
    pt = pipe(class_labels=[1, 2], num_images_per_prompt=2, generator=gen(), output_type="pt").images
    assert arr.shape == (4, 16, 16, 3) and pt.shape == (4, 3, 16, 16)
    assert 0 <= arr.min() and arr.max() <= 1
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    assert not torch.equal(pt[0], pt[1])  # same label, different noise
    assert pipe.generator.training  # sampling ran in eval mode and restored the mode
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="latent")

    vec = mlp_pipe()
    assert vec(batch_size=5, output_type="np").images.shape == (5, 2)
    assert vec(class_labels=[0, 1], output_type="pt").images.shape == (2, 2)
    with pytest.raises(ValueError, match="vectors"):
        vec(batch_size=2)  # default output_type="pil"


def test_argument_errors():
    with pytest.raises(ValueError, match="scheduler"):
        OneStepPipeline(generator=unet_pipe().generator)
    uncond = unet_pipe()
    with pytest.raises(ValueError, match="unconditional"):
        uncond(class_labels=[1], output_type="pt")
    with pytest.raises(ValueError, match="prompt"):
        uncond(prompt="a cat", output_type="pt")
    with pytest.raises(ValueError, match="batch_size"):
        mlp_pipe()(class_labels=[0, 1], batch_size=3, output_type="pt")


def test_to_device_and_dtype():
    pipe = edm_pipe().to("cpu")
    assert pipe.device.type == "cpu"
    a, b = pipe.sample(2, seed=3), pipe.sample(2, seed=3)
    assert torch.equal(a, b)


def test_text_conditioned_latent_pipeline(tmp_path):
    """UNet2DConditionModel + AutoencoderKL + CLIP: prompts -> embeddings -> latents -> decoded images."""
    import transformers  # in the [test] extra: a missing install must fail, not skip
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"),
                                           merges_file=str(tmp_path / "merges.txt"), model_max_length=8)
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, projection_dim=16, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=16)
    pipe = OneStepPipeline(generator=unet, scheduler=DDPMScheduler(), vae=vae, text_encoder=text_encoder,
                           tokenizer=tokenizer, sigma_init=80.0)
    assert pipe.config.sample_shape == [4, 8, 8] and pipe.is_image
    images = pipe(prompt=["a cat", "dog"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1

    # sample() = decode(G(z)) with the prompt embeddings, latents / scaling_factor through the VAE
    z = randn_tensor((2, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb = pipe.encode_prompt(["a cat", "a cat"])
        lat = pipe.denoiser(80.0 * z, torch.full((2,), 80.0), emb)
        expected = vae.decode(lat / vae.config.scaling_factor).sample.clamp(-1, 1)
    x = pipe.sample(2, seed=4, cond="a cat")
    torch.testing.assert_close(x, expected)

    pipe.save_pretrained(tmp_path / "pipe")
    again = OneStepPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(again.sample(2, seed=4, cond="a cat"), x)
    assert torch.equal(again.sample(2, seed=4), pipe.sample(2, seed=4))  # no prompt: the empty prompt


def test_every_latent_decode_applies_the_vae_scaling_and_shift():
    """A VAE with a shift_factor (SD3 / Flux style): the one-step pipeline, the SuperDiff pipeline and the SD
    conditioner decode ``x / scaling_factor + shift_factor``, and encoding inverts it (fdistill.networks.latent_codec)."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from fdistill.networks.latent_codec import decode_latents, from_vae_latents, to_vae_latents
    from fdistill.sd.conditioner import PromptConditioner
    from superpose.pipeline import SuperDiffPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=1.5,
                        shift_factor=0.3).eval()
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(to_vae_latents(vae, x), x / 1.5 + 0.3)
    assert torch.allclose(from_vae_latents(vae, to_vae_latents(vae, x)), x, atol=1e-6)
    with torch.no_grad():
        expected = vae.decode(x / 1.5 + 0.3).sample.clamp(-1, 1)
        assert torch.allclose(decode_latents(vae, x), expected)
        one_step = SimpleNamespace(vae=vae, is_image=True)
        assert torch.allclose(OneStepPipeline.decode(one_step, x), expected)
        superdiff = SimpleNamespace(vae=vae, numpy_to_pil=None)
        assert torch.allclose(SuperDiffPipeline._postprocess(superdiff, x, "pt"), (expected / 2 + 0.5).clamp(0, 1))
        conditioner = SimpleNamespace(vae=vae, device=torch.device("cpu"))
        assert torch.allclose(PromptConditioner.decode(conditioner, x, chunk=1), expected, atol=1e-5)  # per-chunk
