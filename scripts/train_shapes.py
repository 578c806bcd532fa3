"""Train the ``demo:shapes`` FLUX-architecture pipeline on the procedural shapes world, on a CPU.

Phases, all seeded from ``--seed`` (same seed and thread count, same weights):
1. render the training images (held-out color pairs never appear);
2. train the AutoencoderKL (8x downsampling: a 64x64 image is 8x8 latents, 16 packed tokens);
3. encode every image once and set the VAE's shift/scaling factors from the latent statistics;
4. train FluxTransformer2DModel with both text encoders *jointly* (flow matching, v = noise - x0):
   FluxPipeline gives text tokens no positions (``txt_ids`` are zero), so word order reaches the
   transformer only through what the encoders compute (T5's relative position bias, CLIP's causal
   attention into its pooled EOS state). Captions: 10% dropped to "" (so true CFG works), 20%
   missing one color phrase, and CLIP alone sees "" 30% of the time. Without that last part the
   pooled CLIP vector decided every color and drew 2 of 8 never-trained color pairs swapped; with
   it T5's per-token states carry the word roles and no held-out pair was swapped (1,500-step
   runs). AdamW with warmup + cosine decay, EMA of the weights;
5. save the EMA weights with ``save_pretrained`` (safetensors; the transformer in float16), reload
   them as they ship and judge one image per combination by pixels.

Usage: python scripts/train_shapes.py [--out DIR] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Sleep, don't spin, while waiting at OpenMP barriers: on a shared 2-core machine a spinning
# thread burns the core its partner needs, and a training step got 3-10x slower whenever another
# process was busy (0.7-0.9 s/step passive vs 3-10 s active, measured). Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ray_dit.demo import shapes_world as world  # noqa: E402
from ray_dit.demo.judge import Geometry, Tally, judge  # noqa: E402
from ray_dit.demo.shapes_model import (  # noqa: E402
    CLIP_LENGTH,
    T5_LENGTH,
    TRUE_CFG_SCALE,
    WEIGHTS_DIR,
    ShapesArch,
    build_untrained,
    load_shapes,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warmup then cosine decay to ``floor * peak``: fast early progress, calm finish."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches (a fresh permutation per epoch)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (what AutoencoderKL expects)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# -- VAE ------------------------------------------------------------------------------------------


def train_vae(vae: torch.nn.Module, images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Reconstruction MSE on the posterior mean plus 10% noise (relative to the latents' spread),
    so the decoder tolerates the slightly-off latents a diffusion model produces; a small L2 keeps
    the latents bounded. (Sampling the posterior instead starts at unit noise, which drowns the
    young encoder's signal and trains several times slower.)"""
    gen = torch.Generator().manual_seed(args.seed + 1)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    order = batches(len(images), args.vae_batch, gen)
    curve: list[tuple[int, float]] = []
    t0, running = time.perf_counter(), 0.0
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr, 50)
        x = to_tensor(images[next(order).numpy()])
        mean = vae.encode(x).latent_dist.mean
        spread = mean.detach().std()
        z = mean + args.vae_noise * spread * torch.randn(mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = torch.mean((recon - x) ** 2)
        kl = torch.mean(mean**2)
        loss = mse + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running += float(mse.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.vae_steps:
            k = (step % args.log_every) + 1
            avg = running / k
            running = 0.0
            curve.append((step + 1, avg))
            rate = (time.perf_counter() - t0) / (step + 1)
            psnr = 10 * math.log10(4.0 / max(avg, 1e-12))
            log(
                f"vae {step + 1}/{args.vae_steps} mse {avg:.5f} ({psnr:.1f} dB) latent rms {float(kl.detach()) ** 0.5:.2f} "
                f"{rate:.2f}s/step eta {rate * (args.vae_steps - step - 1) / 60:.1f} min"
            )
    vae.eval()
    return {"curve": curve, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def encode_all(vae: torch.nn.Module, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means of every image (the training targets; encoded once, not per step)."""
    out = [
        vae.encode(to_tensor(images[i : i + batch])).latent_dist.mean for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def vae_report(vae: torch.nn.Module, samples: list[world.Sample]) -> dict[str, float]:
    """PSNR and the pixel judge's accuracy on reconstructions (the ceiling for the full model)."""
    images = np.stack([s.image for s in samples])
    recon = vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample
    recon_u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    mse = float(np.mean((recon_u8.astype(np.float64) - images.astype(np.float64)) ** 2))
    tally = Tally()
    for s, r in zip(samples, recon_u8, strict=True):
        tally.add(judge(r, s.combo))
    return {
        "psnr": 10 * math.log10(255.0**2 / mse),
        "bg": tally.rate("bg"),
        "fg": tally.rate("fg"),
        "shape": tally.rate("shape"),
    }


# -- transformer ----------------------------------------------------------------------------------


def tokenize(pipe: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids exactly as FluxPipeline makes them (padding to the fixed lengths)."""
    clip = pipe.tokenizer(
        captions, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt"
    )
    t5 = pipe.tokenizer_2(
        captions, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt"
    )
    return clip.input_ids, t5.input_ids


def _parse(caption: str) -> tuple[str, str, str]:
    from ray_dit.demo.judge import parse_prompt

    combo = parse_prompt(caption)
    return combo.fg, combo.shape, combo.bg


def pack(z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> FluxPipeline's packed [B, h/2 * w/2, 4C] tokens."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


class EMA:
    """Exponential moving average of parameters, with the usual short-horizon warmup."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, modules: list[torch.nn.Module]) -> None:
        params = [p for m in modules for p in m.parameters()]
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s)


def train_transformer(
    pipe: Any, latents: torch.Tensor, caption_index: np.ndarray, captions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(args.seed + 2)
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    for m in modules:
        m.train()
        m.requires_grad_(True)
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    ema = EMA(modules, args.ema)
    # Caption table: per combination [full, without background, without shape color], then "".
    variants = [[c, *world.partial_captions(world.Combo(*_parse(c)))] for c in captions]
    clip_ids, t5_ids = tokenize(pipe, [v for row in variants for v in row] + [""])
    empty = 3 * len(captions)
    caption_index_t = torch.from_numpy(caption_index).long()
    side = latents.shape[-1] // 2  # packed tokens per row
    img_ids = pipe._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
    txt_ids = torch.zeros(T5_LENGTH, 3)
    shift = pipe.scheduler.config.shift
    order = batches(len(latents), args.batch, gen)
    curve: list[tuple[int, float]] = []
    t0, running = time.perf_counter(), 0.0
    for step in range(args.steps):
        lr = cosine_lr(step, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = next(order)
        x0 = pack(latents[idx])
        u = torch.rand(len(idx), generator=gen)
        variant = torch.zeros(len(idx), dtype=torch.long)
        variant[u < args.caption_dropout + args.partial_captions] = 1
        variant[u < args.caption_dropout + args.partial_captions / 2] = 2
        cap = 3 * caption_index_t[idx] + variant
        cap[u < args.caption_dropout] = empty
        # CLIP's pooled vector (into every block's AdaLN) is a whole-caption summary that can
        # memorise caption -> image; hiding it sometimes makes the transformer read the roles of
        # the words from T5's per-token states, which compose to unseen pairs.
        clip_cap = cap.clone()
        clip_cap[torch.rand(len(idx), generator=gen) < args.clip_dropout] = empty
        # Logit-normal times, shifted like the sampler's schedule (more weight on high noise).
        t = torch.sigmoid(torch.randn(len(idx), generator=gen))
        sigma = shift * t / (1 + (shift - 1) * t)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None]
        xt = (1 - s) * x0 + s * noise
        pooled = pipe.text_encoder(clip_ids[clip_cap]).pooler_output
        text = pipe.text_encoder_2(t5_ids[cap])[0]
        pred = pipe.transformer(
            hidden_states=xt,
            timestep=sigma,
            pooled_projections=pooled,
            encoder_hidden_states=text,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = torch.mean((pred - (noise - x0)) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            avg = running / k
            running = 0.0
            curve.append((step + 1, avg))
            rate = (time.perf_counter() - t0) / (step + 1)
            log(
                f"dit {step + 1}/{args.steps} loss {avg:.4f} lr {lr:.2e} {rate:.2f}s/step "
                f"eta {rate * (args.steps - step - 1) / 60:.1f} min"
            )
    ema.copy_to(modules)
    for m in modules:
        m.eval()
        m.requires_grad_(False)
    return {"curve": curve, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def quick_eval(
    pipe: Any, combos: list[world.Combo], seed: int, cfg: float, steps: int
) -> tuple[Tally, Geometry]:
    """Judge one image per combination (fresh seeds) at ``steps`` steps: accuracy and geometry."""
    tally, geometry = Tally(), Geometry()
    for i in range(0, len(combos), 16):
        chunk = combos[i : i + 16]
        prompts = [c.caption for c in chunk]
        out = pipe(
            prompts,
            negative_prompt=[""] * len(chunk) if cfg > 1 else None,
            true_cfg_scale=cfg,
            height=world.IMAGE_SIZE,
            width=world.IMAGE_SIZE,
            num_inference_steps=steps,
            max_sequence_length=T5_LENGTH,
            generator=[torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))],
            output_type="np",
        )
        images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
        for c, img in zip(chunk, images, strict=True):
            verdict = judge(img, c)
            tally.add(verdict)
            geometry.add(verdict, c.shape)
    return tally, geometry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--vae-steps", type=int, default=900)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--vae-kl", type=float, default=1e-4, help="weight of the latents' L2")
    parser.add_argument("--vae-noise", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3800)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1, help='captions replaced by ""')
    parser.add_argument("--clip-dropout", type=float, default=0.3, help='CLIP alone sees ""')
    parser.add_argument("--partial-captions", type=float, default=0.2, help="captions missing one color")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--arch", type=str, default="{}", help="JSON overrides of ShapesArch fields")
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="reuse a trained VAE + latents (experiments)"
    )
    parser.add_argument("--eval-cfg", type=float, default=TRUE_CFG_SCALE)
    parser.add_argument("--eval-steps", type=int, default=28)
    parser.add_argument("--no-eval", action="store_true", help="skip the closing judge run")
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images, args.vae_steps, args.steps, args.log_every = 512, 20, 20, 10
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    arch_overrides = json.loads(args.arch)
    for key in ("vae_channels", "rope_axes"):
        if key in arch_overrides:
            arch_overrides[key] = tuple(arch_overrides[key])
    arch = ShapesArch(**arch_overrides)
    pipe = build_untrained(arch, seed=args.seed)
    log(f"arch {asdict(arch)}")
    for name in ("text_encoder", "text_encoder_2", "vae", "transformer"):
        n = sum(p.numel() for p in getattr(pipe, name).parameters())
        log(f"{name}: {n / 1e6:.2f}M parameters")

    combos = world.train_combos()
    captions = [c.caption for c in combos]
    samples = world.dataset(args.images, seed=args.seed, combos=combos)
    images = np.stack([s.image for s in samples])
    caption_index = np.asarray([combos.index(s.combo) for s in samples])
    log(
        f"rendered {len(samples)} images of {len(combos)} trained combinations ({len(world.eval_combos())} held out)"
    )
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "arch": asdict(arch)}

    if args.vae_from is not None:
        pipe.vae = type(pipe.vae).from_pretrained(args.vae_from / "vae")
        latents = torch.load(args.vae_from / "latents.pt")
        log(f"reused VAE and latents from {args.vae_from}")
    else:
        report["vae"] = train_vae(pipe.vae, images, args)
        t_enc = time.perf_counter()
        latents = encode_all(pipe.vae, images)
        log(
            f"encoded {len(latents)} latents {tuple(latents.shape[1:])} in {time.perf_counter() - t_enc:.0f}s"
        )
        mean, std = float(latents.mean()), float(latents.std())
        pipe.vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    pipe.vae.eval()
    pipe.vae.requires_grad_(False)
    checks = world.dataset(240, seed=args.seed + 1000, combos=world.all_combos())
    report["vae_check"] = vae_report(pipe.vae, checks)
    log(f"VAE check: {report['vae_check']}")
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
    normalized = (latents - shift) * scale
    if os.environ.get("SHAPES_SAVE_LATENTS"):
        keep = Path(os.environ["SHAPES_SAVE_LATENTS"])
        pipe.vae.save_pretrained(keep / "vae")
        torch.save(latents, keep / "latents.pt")

    report["transformer"] = train_transformer(pipe, normalized, caption_index, captions, args)
    args.out.mkdir(parents=True, exist_ok=True)
    # The transformer is stored in float16 (half the bytes, so a wider one fits the 20 MB budget);
    # load_shapes upcasts it to float32, and the eval below judges exactly what was saved.
    pipe.transformer.to(torch.float16)
    pipe.save_pretrained(str(args.out), safe_serialization=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(f"saved to {args.out} ({size / 2**20:.1f} MiB)")

    eval_pipe = load_shapes(args.out)
    steps = args.eval_steps if not args.quick else 4
    groups = [] if args.no_eval else [("trained", world.train_combos()), ("held-out", world.eval_combos())]
    for label, group in groups:
        tally, geometry = quick_eval(eval_pipe, group, seed=args.seed + 777, cfg=args.eval_cfg, steps=steps)
        r50, r90, c50, c10 = geometry.summary()
        report[f"eval_{label}"] = {
            **vars(tally),
            "circle_roundness_median": r50,
            "circle_roundness_p90": r90,
            "square_corner_fill_median": c50,
            "square_corner_fill_p10": c10,
        }
        log(
            f"eval {label} ({steps} steps, true_cfg {args.eval_cfg}): {tally.row()}  "
            f"circle roundness median {r50:.3f} p90 {r90:.3f}  square corners median {c50:.2f} p10 {c10:.2f}"
        )
    report["total_seconds"] = time.perf_counter() - t_start
    (args.out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"done in {report['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
