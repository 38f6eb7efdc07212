"""The training loop: FLUX's flow-matching objective on a PEFT LoRA, checkpointed, resumable, cancellable.

One step (as FLUX is trained, and as diffusers' FLUX trainer does it):

* a latent ``x0`` drawn from a photo's cached VAE distribution, scaled with the VAE's shift/scale factors;
* noise ``n`` and a sigma from a logit-normal density, shifted for the image's token count exactly like
  the inference scheduler shifts its sigmas (``calculate_shift``), so training sees the noise levels that
  sampling will visit;
* ``x_t = (1 - sigma) x0 + sigma n``, packed into 2x2 patches (FLUX's packed latents), with guidance
  embedding 1 for guidance-distilled dev models;
* loss = MSE(transformer(x_t, sigma), n - x0)  (the velocity target), AdamW on the LoRA weights only.

Determinism: every random draw (photo order, caption dropout, latent sample, noise, sigma) comes from one
seeded ``torch.Generator`` whose state is checkpointed with the LoRA and optimiser, so a resumed run is
byte-identical to an uninterrupted one, and the same seed and photos give the same LoRA bytes (on the
same hardware and library versions).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.errors import Cancelled
from pipelines.settings import Settings
from training.config import TARGET_MODULES, TrainConfig
from training.dataset import Dataset
from training.errors import NameTaken, TrainingConfigError
from training.lora_file import WEIGHTS_NAME, adapter_metadata, lora_state_dict, save_lora
from training.samples import write_sample_row, write_sample_sheet

logger = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]
STATE_FILE = "state.pt"


@dataclass
class TrainingOutcome:
    output_dir: Path
    weights: Path
    report: dict
    samples: list[Path] = field(default_factory=list)


def output_dir_for(settings: Settings, name: str) -> Path:
    return Path(settings.models_dir) / "lora" / name


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*/" + STATE_FILE))
    return ckpts[-1].parent if ckpts else None


def _prepare_output(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Decide what to do with an existing folder; return the checkpoint to resume from, if any."""
    has_results = (out / WEIGHTS_NAME).exists() or (out / "checkpoints").exists()
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            logger.warning("--resume: no checkpoint in %s; starting from step 0", out)
        return ckpt
    if has_results and not overwrite:
        raise NameTaken(f"the LoRA folder {out.name!r} already holds a trained LoRA or checkpoints; pass --resume "
                        "to continue it, --overwrite to start again, or choose another --name", param="name")
    for child in ("checkpoints", "samples", WEIGHTS_NAME, "training.json", "samples.png"):
        target = out / child
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return None


def _shifted_sigma(u, image_seq_len: int, scheduler_config):
    """Logit-normal draw, then FLUX's resolution-dependent time shift (the one used at inference)."""
    import torch
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sigma = torch.sigmoid(u)
    if scheduler_config.get("use_dynamic_shifting", False):
        mu = calculate_shift(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                             scheduler_config.get("max_image_seq_len", 4096),
                             scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))
        return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
    shift = scheduler_config.get("shift", 1.0)
    return shift * sigma / (1 + (shift - 1) * sigma)


def train(dataset: Dataset, config: TrainConfig, settings: Settings, *, on_event: EventCallback | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = False, overwrite: bool = False,
          output_dir: Path | None = None) -> TrainingOutcome:
    """Train ``config.name`` on ``dataset``; write the LoRA, ``training.json`` and the sample sheet."""
    import torch
    from accelerate import Accelerator
    from diffusers import FluxPipeline
    from peft import LoraConfig

    from pipelines.model_source import MODEL_TYPES, load_pipeline, pick_device, resolve_model_source
    from training.data_cache import encode_before_training, encode_latents, encode_texts

    emit = on_event or (lambda _e: None)
    out = Path(output_dir) if output_dir is not None else output_dir_for(settings, config.name)
    resume_from = _prepare_output(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    source = resolve_model_source(settings)
    device, dtype = pick_device(settings)
    cuda = device.startswith("cuda")
    pipe = load_pipeline(source, "cpu", dtype)  # to the device part by part: encode_before_training
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)

    # ---- cache latents and text embeddings once ---------------------------------------------------
    emit({"type": "phase", "phase": "caching", "images": len(dataset.photos)})
    sample_prompts = [p.format(trigger=config.trigger) for p in config.sample_prompts]

    def encode():
        items = encode_latents(pipe, dataset.photos, config.resolutions, config.trigger, device, dtype)
        return items, encode_texts(pipe, [it.caption for it in items] + [""] + sample_prompts, device,
                                   settings.max_sequence_length)

    # the text encoders and the VAE on the device, encode, the text encoders freed, then the transformer
    items, texts = encode_before_training(pipe, device, encode)
    vae_shift = pipe.vae.config.shift_factor or 0.0
    vae_scale = pipe.vae.config.scaling_factor
    sched_cfg = dict(pipe.scheduler.config)
    guidance_embeds = bool(transformer.config.guidance_embeds)
    _, _, _, sample_guidance = MODEL_TYPES[source.model_type]

    # ---- the LoRA ------------------------------------------------------------------------------------
    present = {n.split(".", 2)[-1] for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in TARGET_MODULES if any(p == t or p.endswith("." + t) for p in present)]
    torch.manual_seed(config.seed)  # PEFT's A-matrix init draws from the global generator
    transformer.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights=True,
                                       target_modules=targets, lora_dropout=0.0))
    lora_params = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    for _, p in lora_params:
        p.data = p.data.float()  # LoRA weights train in float32 even when the base is bf16
    use_gc = config.gradient_checkpointing if config.gradient_checkpointing is not None else cuda
    if use_gc:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW([p for _, p in lora_params], lr=config.lr, betas=(0.9, 0.999),
                                  weight_decay=1e-4, eps=1e-8)
    accelerator = Accelerator(mixed_precision="bf16" if cuda and dtype == torch.bfloat16 else "no", cpu=not cuda)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)

    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    step, losses, elapsed_before, resumed_order = 0, [], 0.0, []
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        if state["fingerprint"] != config.fingerprint() or state["dataset_hash"] != dataset.hash:
            raise TrainingConfigError(f"cannot resume from {resume_from.name}: it was trained with other options or "
                                      "other photos; use the same ones, or --overwrite", param="resume")
        named = dict(lora_params)
        with torch.no_grad():
            for k, v in state["lora"].items():
                named[k].copy_(v.to(named[k].device))
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        step, losses, elapsed_before = state["step"], list(state["losses"]), state["elapsed_s"]
        resumed_order = list(state["order"])
        logger.info("resumed %s from step %d", config.name, step)
        emit({"type": "resumed", "step": step})

    def sample(at_step: int) -> Path:
        was_training = transformer.training
        transformer.eval()
        images = []
        for prompt, seed in zip(sample_prompts, config.sample_seeds):
            t = texts[prompt]
            images.append(pipe(prompt_embeds=t.prompt_embeds, pooled_prompt_embeds=t.pooled,
                               width=config.sample_size, height=config.sample_size,
                               num_inference_steps=config.sample_steps, guidance_scale=sample_guidance,
                               generator=torch.Generator(device="cpu").manual_seed(seed)).images[0])
        transformer.train(was_training)
        row = write_sample_row(out / "samples", at_step, images)
        write_sample_sheet(out / "samples", out / "samples.png", sample_prompts, list(config.sample_seeds))
        emit({"type": "sample", "step": at_step, "file": str(row.relative_to(out))})
        return row

    def checkpoint(at_step: int) -> None:
        folder = out / "checkpoints" / f"step-{at_step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(transformer)
        save_lora(folder / WEIGHTS_NAME, lora_state_dict(unwrapped), lora_cfg, provenance(at_step))
        state = {"step": at_step, "lora": {n: p.detach().cpu().clone() for n, p in lora_params},
                 "optimizer": optimizer.state_dict(), "rng": gen.get_state(), "losses": list(losses), "order": list(order),
                 "elapsed_s": elapsed_before + time.perf_counter() - loop_started,
                 "fingerprint": config.fingerprint(), "dataset_hash": dataset.hash}
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, folder / STATE_FILE)
        for older in (out / "checkpoints").glob("step-*/" + STATE_FILE):  # keep the optimiser state once
            if older.parent != folder:
                older.unlink()
        emit({"type": "checkpoint", "step": at_step, "dir": str(folder.relative_to(out))})

    lora_cfg = adapter_metadata(config.rank, config.alpha, targets)
    base_label = "flux-service demo model (random weights)" if source.demo else source.path.name

    def provenance(at_step: int) -> dict:
        return {"base_model": base_label, "base_model_type": source.model_type, "steps": at_step,
                "rank": config.rank, "alpha": f"{config.alpha:g}", "lr": f"{config.lr:g}",
                "trigger_word": config.trigger, "dataset_hash": dataset.hash, "seed": config.seed,
                "resolutions": ",".join(map(str, config.resolutions)), "trainer": "flux-service train"}

    # ---- the loop ------------------------------------------------------------------------------------
    loop_started = time.perf_counter()
    if step == 0:
        sample(0)
    order: list[int] = list(resumed_order)
    transformer.train()
    emit({"type": "phase", "phase": "training", "step": step, "total": config.steps})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_time, steps_this_run = 0.0, 0  # compute time of the steps alone (samples excluded) for the ETA
    while step < config.steps:
        if should_stop is not None and should_stop():
            if step and latest_checkpoint(out) != out / "checkpoints" / f"step-{step:06d}":
                checkpoint(step)
            _write_report(out, config, dataset, source, device, dtype, losses, step, "cancelled", started,
                          elapsed_before + time.perf_counter() - loop_started, use_gc, cuda, resume_from)
            emit({"type": "cancelled", "step": step})
            raise Cancelled(f"training {config.name!r} cancelled at step {step} of {config.steps}; "
                            "continue it with --resume")
        t0 = time.perf_counter()
        if not order:
            order = torch.randperm(len(items), generator=gen).tolist()
        item = items[order.pop(0)]
        drop = torch.rand(1, generator=gen).item() < config.caption_dropout
        text = texts["" if drop else item.caption]
        eps_latent = torch.randn(item.mean.shape, generator=gen).to(item.mean.device)
        x0 = (item.mean + item.std * eps_latent - vae_shift) * vae_scale
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        u = torch.randn(1, generator=gen).item()
        _, c, h, w = x0.shape
        sigma = _shifted_sigma(torch.tensor(u), (h // 2) * (w // 2), sched_cfg).item()
        xt = (1.0 - sigma) * x0 + sigma * noise
        packed = FluxPipeline._pack_latents(xt, 1, c, h, w).to(dtype)
        img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, x0.device, dtype)
        with accelerator.autocast():
            pred = transformer(
                hidden_states=packed,
                timestep=torch.full((1,), sigma, device=x0.device, dtype=dtype),
                guidance=torch.full((1,), 1.0, device=x0.device, dtype=dtype) if guidance_embeds else None,
                pooled_projections=text.pooled.to(dtype),
                encoder_hidden_states=text.prompt_embeds.to(dtype),
                txt_ids=text.text_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        pred = FluxPipeline._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                            pipe.vae_scale_factor)
        loss = torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_([p for _, p in lora_params], config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        losses.append(round(loss.item(), 6))
        step_time += time.perf_counter() - t0
        per_step = step_time / steps_this_run
        emit({"type": "step", "step": step, "total": config.steps, "loss": losses[-1],
              "eta_s": round(per_step * (config.steps - step), 1), "step_s": round(per_step, 4)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint(step)
            sample(step)

    seconds = elapsed_before + time.perf_counter() - loop_started
    weights = save_lora(out / WEIGHTS_NAME, lora_state_dict(accelerator.unwrap_model(transformer)), lora_cfg,
                        provenance(step))
    report = _write_report(out, config, dataset, source, device, dtype, losses, step, "succeeded", started,
                           seconds, use_gc, cuda, resume_from,
                           step_s=step_time / max(steps_this_run, 1))
    emit({"type": "done", "step": step, "weights": str(weights), "report": report})
    logger.info("trained %s: %d steps, final loss %.4f, %.1fs -> %s", config.name, step,
                report["final_loss"] or float("nan"), seconds, weights)
    return TrainingOutcome(output_dir=out, weights=weights, report=report,
                           samples=sorted((out / "samples").glob("step-*.png")))


def _write_report(out: Path, config: TrainConfig, dataset: Dataset, source, device, dtype, losses: list[float],
                  step: int, status: str, started: float, seconds: float, use_gc: bool, cuda: bool,
                  resume_from: Path | None, step_s: float | None = None) -> dict:
    import torch

    tail = losses[-max(1, len(losses) // 10):] if losses else []
    report = {
        "status": status,
        "name": config.name,
        "trigger_word": config.trigger,
        "base_model": "demo" if source.demo else source.path.name,
        "base_model_type": source.model_type,
        "demo": source.demo,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "gradient_checkpointing": use_gc,
        "config": config.to_dict(),
        "dataset": dataset.summary(),
        "steps_done": step,
        "final_loss": round(sum(tail) / len(tail), 6) if tail else None,
        "losses": losses,
        "train_seconds": round(seconds, 2),
        "step_seconds": round(step_s, 4) if step_s is not None else None,
        "total_seconds": round(time.perf_counter() - started, 2),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None,
        "resumed_from": resume_from.name if resume_from else None,
        "weights": WEIGHTS_NAME if status == "succeeded" else None,
        "sample_sheet": "samples.png",
    }
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "training.json")
    return report
