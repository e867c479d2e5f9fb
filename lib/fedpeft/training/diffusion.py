"""Latent-diffusion LoRA training (the Stable Diffusion arm of the LoRA-vs-QLoRA report), with diffusers.

A UNet predicts the noise added to VAE latents at a random timestep, conditioned on caption embeddings from a
frozen text encoder; the loss is the mean squared error against the true noise (the seed's objective). LoRA goes
on the UNet's attention projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` through diffusers' own
``add_adapter`` (peft underneath); the VAE and text encoder stay frozen.

Components:

* ``tiny`` and ``small``: UNet, VAE and CLIP text encoder built from configs with random weights, and captions
  tokenized byte by byte (no CLIP tokenizer is available offline). Their speed and memory are real; their samples
  are not art, since nothing is pretrained;
* a hub id such as ``runwayml/stable-diffusion-v1-5`` (``paper``; needs internet).

Images: a folder of paintings (centre-cropped and resized to ``resolution``, caption from the file name) or
generated colour fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpeft.core import checkpoints
from fedpeft.core.device import synchronize
from fedpeft.core.integrity import decoding, require_data_file
from fedpeft.models.lora_settings import lora_config
from fedpeft.training.contract import (
    EvalResult,
    ExtraLoss,
    Trainer,
    TrainStats,
    check_learning_rate,
    check_positive_int,
    optimizer_step,
)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: runwayml/stable-diffusion-v1-5 unet/config.json (architecture only).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", center_input_sample=False, norm_eps=1e-5,
)

SIZES = {
    "tiny": dict(channels=(32, 64), text_dim=32, vae_channels=(32, 64), groups=8, heads=4),
    "small": dict(channels=(64, 128, 256), text_dim=128, vae_channels=(32, 64, 64), groups=16, heads=8),
}


@dataclass
class Components:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object
    latent_scale: float


def sd15_unet_on_meta():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET)


def build_components(size: str, seed: int = 0) -> Components:
    """UNet, VAE and text encoder of ``size`` (``tiny`` or ``small``) from configs, randomly initialised."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fedpeft.models.causal_lm import byte_level_tokenizer

    if size not in SIZES:
        raise ValueError(f"diffusion model size = {size!r} is not allowed; it must be one of {sorted(SIZES)} or a hub id")
    spec = SIZES[size]
    torch.manual_seed(seed)
    levels = len(spec["channels"])
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=spec["channels"],
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=spec["text_dim"], attention_head_dim=spec["heads"], norm_num_groups=spec["groups"],
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=spec["vae_channels"],
                        down_block_types=("DownEncoderBlock2D",) * len(spec["vae_channels"]),
                        up_block_types=("UpDecoderBlock2D",) * len(spec["vae_channels"]), norm_num_groups=spec["groups"])
    tokenizer = byte_level_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=spec["text_dim"], intermediate_size=2 * spec["text_dim"],
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                                bos_token_id=tokenizer.eos_token_id))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    return Components(unet, vae.requires_grad_(False).eval(), text_encoder.requires_grad_(False).eval(), tokenizer, scheduler,
                      latent_scale=0.18215)


def load_hub_components(model_id: str, dtype: torch.dtype = torch.bfloat16) -> Components:  # pragma: no cover - internet
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", torch_dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler")
    return Components(unet, vae.requires_grad_(False).eval(), text_encoder.requires_grad_(False).eval(), tokenizer, scheduler,
                      latent_scale=vae.config.scaling_factor)


def caption_from_filename(path: Path) -> str:
    return f"a painting of {path.stem.replace('-', ' ').replace('_', ' ')} in the style of van gogh"


def load_image_folder(folder: Path, resolution: int, data_root: Path | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images of ``folder`` centre-cropped to a square and resized to ``resolution``, in [-1, 1], shape
    ``(n, 3, resolution, resolution)``, with captions from their file names (sorted by name). With ``data_root``
    (the folder lies inside it) every image is checked against the data root's manifest first."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; set the data root (FEDPEFT_DATA_ROOT) or "
                                f"the diffusion images setting")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    images = []
    for p in paths:
        if data_root is not None:
            require_data_file(Path(data_root), Path(p).relative_to(Path(data_root)).as_posix())
        with decoding(p, "an RGB image"):
            img = Image.open(p).convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(images), [caption_from_filename(p) for p in paths]


def generated_images(count: int, resolution: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Smooth random colour fields with swirls (a stand-in for paintings), in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution), indexing="ij")
    images = []
    for _ in range(count):
        freq, phase = torch.rand(3, generator=g) * 6 + 1, torch.rand(3, generator=g) * 6.28
        r = torch.sqrt(x**2 + y**2)
        channels = [torch.sin(freq[c] * r + phase[c] + 3 * torch.atan2(y, x)) for c in range(3)]
        images.append(torch.stack(channels) * 0.8)
    captions = [f"a generated swirl painting number {i}" for i in range(count)]
    return torch.stack(images), captions


@torch.no_grad()
def encode_captions(components: Components, captions: list[str]) -> torch.Tensor:
    tok = components.tokenizer(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    enc = components.text_encoder
    return enc(input_ids=tok["input_ids"].to(enc.device)).last_hidden_state.float()


@torch.no_grad()
def encode_images(components: Components, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """VAE latent means times the scaling factor (the frozen VAE is run once, not every step)."""
    vae = components.vae
    dtype = next(vae.parameters()).dtype
    parts = [vae.encode(images[i : i + batch_size].to(vae.device, dtype)).latent_dist.mean.float()
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts) * components.latent_scale


def noise_prediction_loss(unet: nn.Module, scheduler, latents: torch.Tensor, text: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text).sample
    return F.mse_loss(pred.float(), noise.float())


@dataclass
class LatentCaptions:
    """Training data of the diffusion UNet: VAE latents (N, C, H, W) and encoded captions (N, tokens, D)."""

    latents: torch.Tensor
    text: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)


@dataclass
class DiffusionTrainer(Trainer):
    """``steps`` AdamW steps of the noise-prediction loss on random batches of ``batch_size`` (images, timesteps
    and noise drawn from the generator); the UNet stays where it is. ``records`` keeps one row per step of the last
    ``train`` call (loss, seconds). ``evaluate`` is the mean loss over every image at ``eval_repeats`` fixed random
    timesteps (seed ``eval_seed``: the same draws for every arm). Batches go to the UNet's device.
    ``checkpoint_path``, ``checkpoint_every_s``: as :class:`fedpeft.training.sft.SFTTrainer`'s (the generator's state
    is part of the checkpoint)."""

    scheduler: Any
    steps: int
    batch_size: int
    lr: float
    eval_seed: int = 1234
    eval_repeats: int = 4
    records: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)
    checkpoint_path: Path | None = field(default=None, repr=False, compare=False)
    checkpoint_every_s: float = field(default=60.0, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int(self, "steps", "batch_size", "eval_repeats")
        check_learning_rate(self.lr)

    def train(self, model: nn.Module, data: LatentCaptions, generator: torch.Generator,
              extra_loss: ExtraLoss | None = None, client_id: str = "all") -> TrainStats:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the UNet has no trainable parameters; attach LoRA first")
        if len(data) == 0:
            raise ValueError(f"client {client_id}: cannot train on an empty data set")
        self.torch_device = next(p for p in model.parameters()).device
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        done, extra = checkpoints.resume_steps(self.checkpoint_path, model, {"optimizer": optimizer})
        if done:
            generator.set_state(extra["generator"])
        model.train()
        self.records = list(extra.get("records", []))
        start_all = saved_at = time.perf_counter()
        for step in range(done + 1, self.steps + 1):
            start = time.perf_counter()
            idx = torch.randint(0, len(data), (self.batch_size,), generator=generator)
            loss = noise_prediction_loss(model, self.scheduler, data.latents[idx].to(self.torch_device),
                                         data.text[idx].to(self.torch_device), generator)
            optimizer_step(optimizer, model, loss, extra_loss)
            synchronize(self.torch_device)
            self.records.append({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - start})
            if self.checkpoint_path is not None and step < self.steps and time.perf_counter() - saved_at >= self.checkpoint_every_s:
                checkpoints.save_steps(self.checkpoint_path, model, step, {"optimizer": optimizer},
                                       {"generator": generator.get_state(), "records": self.records})
                saved_at = time.perf_counter()
        mean_loss = float(np.mean([r["loss"] for r in self.records]))
        return TrainStats(loss=mean_loss, examples=self.steps * self.batch_size, seconds=time.perf_counter() - start_all)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: LatentCaptions) -> EvalResult:
        start = time.perf_counter()
        model.eval()
        g = torch.Generator().manual_seed(self.eval_seed)
        device = next(p for p in model.parameters()).device
        latents, text = data.latents.to(device), data.text.to(device)
        losses = [float(noise_prediction_loss(model, self.scheduler, latents, text, g)) for _ in range(self.eval_repeats)]
        return EvalResult(loss=float(np.mean(losses)), examples=len(data), seconds=time.perf_counter() - start)


@torch.no_grad()
def sample_image(components: Components, unet: nn.Module, caption: str, latent_size: int, steps: int = 20, seed: int = 0) -> np.ndarray:
    """One image from pure noise with DDIM (no classifier-free guidance), as a uint8 HxWx3 array."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(components.scheduler.config)
    ddim.set_timesteps(steps)
    device = next(p for p in unet.parameters()).device
    text = encode_captions(components, [caption]).to(device)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 4, latent_size, latent_size), generator=g).to(device)
    unet.eval()
    for t in ddim.timesteps:
        pred = unet(latents, t, encoder_hidden_states=text).sample
        latents = ddim.step(pred, t, latents).prev_sample
    vae = components.vae
    vae_param = next(vae.parameters())
    image = vae.decode((latents / components.latent_scale).to(vae_param.device, vae_param.dtype)).sample.float().cpu()
    image = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return image


def attach_unet_lora(unet: nn.Module, rank: int, alpha: float, targets=tuple(LORA_TARGETS)) -> nn.Module:
    """diffusers' ``add_adapter`` with a peft ``LoraConfig`` (checked by :func:`fedpeft.models.lora_settings.lora_config`)."""
    config = lora_config(unet, rank, alpha, 0.0, list(targets), init_lora_weights="gaussian")
    unet.requires_grad_(False)
    unet.add_adapter(config)
    return unet


def latent_size(resolution: int, vae: nn.Module) -> int:
    downs = len(vae.config.block_out_channels) - 1
    return resolution // (2**downs)
