"""The one-step generator users ship: a diffusers ``DiffusionPipeline`` around ``G(z)``.

MATH §0: ``G_theta(z) = D_gen(mu + sigma_init * z, sigma_init, cond)``, ``z ~ N(0, I)`` (``mu``: the generator's data
mean, 0 for images). ``D_gen`` is any Denoiser that is a
diffusers ``ModelMixin`` (``MLPDenoiser``, ``EDMDenoiser``), or a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
together with the ``DDPMScheduler`` that defines its noise table (wrapped on the fly by ``DiffusersDenoiser``).
Latent generators carry a ``vae`` (``AutoencoderKL``); text-conditioned ones a CLIP ``text_encoder`` + ``tokenizer``.

    pipe = OneStepPipeline(generator=denoiser, sigma_init=80.0)
    pipe.save_pretrained("out/generator")
    pipe = OneStepPipeline.from_pretrained("out/generator").to("cuda")
    images = pipe(class_labels=[3, 5], generator=torch.Generator().manual_seed(0)).images   # PIL images
    x = pipe.sample(16, seed=0)                                                             # tensor in [-1, 1]
"""
from __future__ import annotations

import importlib
import json
import os
from contextlib import contextmanager
from typing import Sequence

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .denoiser import one_step
from .networks.diffusers_adapter import DiffusersDenoiser

OUTPUT_TYPES = ("pil", "np", "pt")
_DIFFUSERS_UNETS = (UNet2DModel, UNet2DConditionModel)


@contextmanager
def _eval_mode(*modules):
    """Evaluation mode (no dropout) for the duration of a sampling call; the modules' modes are restored after."""
    modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _infer_sample_shape(generator) -> list[int]:
    if getattr(generator, "sample_shape", None) is not None:  # our Denoisers (the Denoiser interface)
        return [int(s) for s in generator.sample_shape]
    if isinstance(generator, _DIFFUSERS_UNETS):
        cfg = generator.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return [cfg.in_channels, h, w]
    raise ValueError(f"cannot infer the sample shape of {type(generator).__name__}; pass sample_shape=")


def _infer_num_classes(generator) -> int:
    cfg = generator.config
    for key in ("label_dim", "num_classes", "num_class_embeds"):
        if cfg.get(key):
            return int(cfg[key])
    return 0


class OneStepPipeline(DiffusionPipeline):
    """One-step generator ``G(z) = D_gen(sigma_init z, sigma_init, cond)`` (MATH §0) as a diffusers pipeline.

    Args:
        generator: the generator Denoiser (``MLPDenoiser``, ``EDMDenoiser``, any ModelMixin Denoiser) or a diffusers
            ``UNet2DModel`` / ``UNet2DConditionModel`` (then ``scheduler`` is required).
        scheduler: ``DDPMScheduler`` with the UNet's noise table and ``prediction_type``.
        vae: ``AutoencoderKL`` for latent generators: images are ``vae.decode(latents / scaling_factor + shift_factor)``.
        text_encoder, tokenizer: CLIP text model and tokenizer: prompts -> encoder hidden states.
        sigma_init: the generator's input noise level (80 for DMD2 / f-distill, 2.5 for SiD / Uni-Instruct).
        sample_shape: shape of one generator output, ``[d]`` (vectors) or ``[C, H, W]`` (images or latents);
            inferred from the generator's config when ``None``.
        num_classes: number of class labels (0 = unconditional); inferred from the generator when ``None``.
    """

    model_cpu_offload_seq = "text_encoder->generator->vae"
    _optional_components = ["scheduler", "vae", "text_encoder", "tokenizer"]

    def __init__(self, generator, scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                 sigma_init: float = 80.0, sample_shape: Sequence[int] | None = None, num_classes: int | None = None):
        super().__init__()
        if isinstance(generator, _DIFFUSERS_UNETS) and scheduler is None:
            raise ValueError(f"a {type(generator).__name__} generator needs the scheduler that defines its noise "
                             "table (a DDPMScheduler)")
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("text_encoder and tokenizer go together: pass both or neither")
        self.register_modules(generator=generator, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        shape = [int(s) for s in (sample_shape if sample_shape is not None else _infer_sample_shape(generator))]
        classes = _infer_num_classes(generator) if num_classes is None else int(num_classes)
        self.register_to_config(sigma_init=float(sigma_init), sample_shape=shape, num_classes=classes)

    # ------------------------------------------------------------------ the generator
    @property
    def denoiser(self) -> torch.nn.Module:
        """The generator as a Denoiser ``D(x, sigma, cond)`` (diffusers UNets wrapped with their noise table)."""
        g = self.generator
        if isinstance(g, _DIFFUSERS_UNETS):
            wrapped = DiffusersDenoiser(g, self.scheduler.alphas_cumprod, self.scheduler.config.prediction_type)
            return wrapped.to(g.device)
        return g

    @property
    def is_image(self) -> bool:
        """Whether outputs are images (``[C, H, W]`` samples or a VAE), rather than vectors."""
        return self.vae is not None or len(self.config.sample_shape) == 3

    def generate(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        """``G(z) = D_gen(mu + sigma_init z, sigma_init, cond)`` (MATH §0): raw output (latents for a VAE model), with
        gradients. ``cond``: class labels, class vectors or text embeddings, as the generator takes them."""
        return one_step(self.denoiser, z, self.config.sigma_init, cond)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Generator output -> images in ``[-1, 1]`` (VAE decode for latents; vectors pass unchanged)."""
        if self.vae is not None:
            from .networks.latent_codec import decode_latents

            return decode_latents(self.vae, x)
        return x.clamp(-1, 1) if self.is_image else x

    # ------------------------------------------------------------------ conditioning
    def encode_prompt(self, prompt: str | Sequence[str], device=None) -> torch.Tensor:
        """Prompts -> CLIP encoder hidden states ``(B, L, C)``."""
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text_encoder/tokenizer: it does not take prompts")
        from .networks.prompt_encoding import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, prompt, device or self._execution_device)

    def _conditioning(self, prompt, class_labels, num_per: int, batch_size: int | None, generator, device):
        """``(cond, batch)`` for one call. Without prompt or labels: random labels for class-conditional models,
        the empty prompt for text models, ``None`` otherwise."""
        if prompt is not None and class_labels is not None:
            raise ValueError("pass prompt or class_labels, not both")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            cond = self.encode_prompt(prompts, device).repeat_interleave(num_per, dim=0)
        elif class_labels is not None:
            if self.config.num_classes == 0:
                raise ValueError("this generator is unconditional: it takes no class_labels")
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            cond = labels.repeat_interleave(num_per).to(device)
        else:
            n = batch_size if batch_size is not None else num_per
            if self.text_encoder is not None:
                return self.encode_prompt([""] * n, device), n
            if self.config.num_classes > 0:
                g = generator[0] if isinstance(generator, list) else generator
                labels = torch.randint(self.config.num_classes, (n,), generator=g,
                                       device=g.device if g is not None else "cpu")
                return labels.to(device), n
            return None, n
        if batch_size is not None and batch_size != cond.shape[0]:
            raise ValueError(f"batch_size={batch_size} but the prompts/labels give {cond.shape[0]} samples")
        return cond, cond.shape[0]

    @torch.no_grad()
    def _sample(self, prompt, class_labels, num_per, batch_size, generator, cond=None) -> torch.Tensor:
        device = self._execution_device
        with _eval_mode(self.generator, self.vae, self.text_encoder):
            if cond is not None:  # conditioning tensor passed through unchanged
                cond, n = cond.to(device), cond.shape[0]
                if batch_size is not None and batch_size != n:
                    raise ValueError(f"batch_size={batch_size} but cond has {n} rows")
            else:
                cond, n = self._conditioning(prompt, class_labels, num_per, batch_size, generator, device)
            z = randn_tensor((n, *self.config.sample_shape), generator=generator, device=device,
                             dtype=torch.float32)
            return self.decode(self.generate(z, cond).float())

    # ------------------------------------------------------------------ public calls
    def sample(self, n: int, seed: int = 0, cond=None) -> torch.Tensor:
        """``n`` samples from seed ``seed``: images ``(n, C, H, W)`` in ``[-1, 1]``, vectors ``(n, d)`` raw.

        ``cond``: ``None`` (random classes for class-conditional models, the empty prompt for text models), a
        prompt or ``n`` prompts, ``n`` integer labels, or a float tensor the generator takes as it is (class vectors,
        text embeddings ``(n, L, C)``).
        """
        g = torch.Generator("cpu").manual_seed(int(seed))
        if isinstance(cond, str):
            return self._sample([cond] * n, None, 1, n, g)
        if isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], str):
            return self._sample(list(cond), None, 1, n, g)
        if torch.is_tensor(cond) and cond.is_floating_point():
            return self._sample(None, None, 1, n, g, cond=cond)
        return self._sample(None, cond, 1, n, g)

    def __call__(self, prompt: str | Sequence[str] | None = None, class_labels=None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 batch_size: int | None = None, return_dict: bool = True):
        """Generate in one network evaluation.

        Args:
            prompt: prompt(s) for text-conditioned generators.
            class_labels: int or list of ints for class-conditional generators (random classes when omitted).
            num_images_per_prompt: samples per prompt / per class label.
            generator: ``torch.Generator`` (or one per sample) for reproducible noise.
            output_type: ``"pil"`` (images only), ``"np"`` (``(B, H, W, C)`` in ``[0, 1]``; vectors raw ``(B, d)``)
                or ``"pt"`` (``(B, C, H, W)`` in ``[0, 1]``; vectors raw).
            batch_size: number of samples without prompts or labels (default ``num_images_per_prompt``).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; valid: {list(OUTPUT_TYPES)}")
        if not self.is_image and output_type == "pil":
            raise ValueError(f"this generator makes vectors of shape {self.config.sample_shape}, not images: "
                             "use output_type='pt' or 'np'")
        x = self._sample(prompt, class_labels, num_images_per_prompt, batch_size, generator).cpu()
        if self.is_image:
            x = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                x = x.permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    x = self.numpy_to_pil(x)
        elif output_type == "np":
            x = x.numpy()
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=x) if return_dict else (x,)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline directory. Only local files are read (``local_files_only`` defaults to True).

        diffusers resolves a component saved as ``["fdistill.networks.edm", "EDMDenoiser"]`` only if that module is
        already imported, so the fdistill modules named in ``model_index.json`` are imported first.
        """
        kwargs.setdefault("local_files_only", True)
        path = os.fspath(pretrained_model_name_or_path)
        if kwargs["local_files_only"] and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(f"no saved pipeline at {path!r} (expected model_index.json)")
        _import_own_components(path)
        return super().from_pretrained(path, **kwargs)


def _import_own_components(path: str) -> None:
    """Import this package's modules that ``model_index.json`` names as component libraries."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return
    with open(index) as fh:
        entries = json.load(fh)
    root = __name__.split(".")[0]
    for value in entries.values():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            if value[0] == root or value[0].startswith(root + "."):
                importlib.import_module(value[0])
