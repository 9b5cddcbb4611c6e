"""SuperDiffPipeline from tiny random diffusers / transformers components (no download)."""
import json

import numpy as np
import pytest
import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from fdistill.networks import DiffusersDenoiser
from superpose.models import PromptModels
from superpose.pipeline import SuperDiffPipeline

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer(tmp_path):
    vocab = ["<|startoftext|>", "<|endoftext|>", "!"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8)


def tiny_text_pipeline(tmp_path):
    torch.manual_seed(0)
    tok = tiny_tokenizer(tmp_path)
    te = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=8, projection_dim=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)).eval()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=16).eval()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = SuperDiffPipeline(unet=unet, scheduler=sched, text_encoder=te, tokenizer=tok, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet(seed):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8).eval()


def _call(pipe, **kw):
    return pipe(num_inference_steps=4, batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kw)


def test_text_pipeline_and_or_with_guidance_and_round_trip(tmp_path):
    pipe = tiny_text_pipeline(tmp_path)
    out = _call(pipe, prompts=["a cat", "a dog"], mode="and", guidance_scale=7.5)
    assert out.images.shape == (2, 16, 16, 3) and np.isfinite(out.images).all()
    assert out.kappa.shape == (3, 2, 2) and torch.isfinite(out.kappa).all()
    assert torch.isfinite(out.log_q).all() and out.solves == 6
    torch.testing.assert_close(out.kappa.sum(1), torch.ones(3, 2, dtype=torch.float64))
    out_or = _call(pipe, prompts=["a cat", "a dog", "sky"], mode="or", guidance_scale=2.0)
    assert out_or.kappa.shape == (3, 3, 2) and (out_or.kappa >= 0).all()
    pil = pipe(prompts=["a cat"], mode="single", num_inference_steps=2, output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (16, 16)
    pipe.save_pretrained(tmp_path / "saved")
    again = SuperDiffPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    out2 = _call(again, prompts=["a cat", "a dog"], mode="and", guidance_scale=7.5)
    np.testing.assert_allclose(out2.images, out.images, atol=1e-6)
    torch.testing.assert_close(out2.log_q, out.log_q)
    with pytest.raises(ValueError, match="prompts"):
        pipe(prompts=None)


def test_prompt_models_batch_guidance_and_track_the_conditional_model(tmp_path):
    # MATH S3: the drift is guided, the tracked prediction is the unguided conditional one.
    pipe = tiny_text_pipeline(tmp_path)
    emb = pipe.encode_prompt(["a cat", "a dog", ""], "cpu")
    den = DiffusersDenoiser(pipe.unet, pipe.scheduler.alphas_cumprod)
    models = PromptModels(den, [emb[0:1], emb[1:2]], emb[2:], guidance_scale=4.0)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 5
    sigma = torch.full((3,), 5.0)
    drift, track = models(x, sigma)
    with torch.no_grad():
        d_u = den(x, sigma, emb[2:].expand(3, -1, -1))
        for i in range(2):
            d_c = den(x, sigma, emb[i:i + 1].expand(3, -1, -1))
            torch.testing.assert_close(track[i], d_c, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(drift[i], d_u + 4.0 * (d_c - d_u), rtol=1e-4, atol=1e-4)


def test_unconditional_unets_pipeline_and_round_trip(tmp_path):
    pipe = SuperDiffPipeline(unet=tiny_unet(0), unet_1=tiny_unet(1), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe.unets) == 2 and not pipe.text_mode
    for mode in ("or", "and", "average"):
        out = _call(pipe, mode=mode)
        assert out.images.shape == (2, 8, 8, 3) and np.isfinite(out.images).all()
        assert out.log_q.shape == (2, 2) and torch.isfinite(out.kappa).all()
    out = _call(pipe, mode="and", process="vp")
    assert np.isfinite(out.images).all()
    ref = _call(pipe, mode="or")
    pipe.save_pretrained(tmp_path / "two")
    again = SuperDiffPipeline.from_pretrained(tmp_path / "two")
    again.set_progress_bar_config(disable=True)
    assert len(again.unets) == 2
    np.testing.assert_allclose(_call(again, mode="or").images, ref.images, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        SuperDiffPipeline.from_pretrained(tmp_path / "missing")
