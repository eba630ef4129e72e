"""Pretrain the bundled CLIP on the synthetic world (contrastive loss, as CLIP itself is trained).

``python -m poclip pretrain --out assets/models/bundled`` writes an open_clip model folder
(``open_clip_config.json`` + ``open_clip_model.safetensors``) that ``load_model('bundled')`` and
open_clip's own ``local-dir:`` loader read, plus ``train_log.jsonl`` and ``training.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from poclip.engine.models import ClipEncoder, ModelSpec
from poclip.world import synth

MODEL_NAME = "poclip-tiny-rn"
RENDER_SIZE = 128  # drawn larger than the model input, then downsampled as real photos are


@dataclass
class PretrainConfig:
    """Pretraining recipe; the defaults produce the shipped model."""

    out: Path = Path("assets/models/bundled")
    steps: int = 4000
    batch_size: int = 128
    pool_size: int = 160_000  # distinct pictures, revisited about steps*batch/pool times
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    seed: int = 0
    eval_every: int = 500
    eval_n: int = 300
    eval_seed: int = 999  # a monitoring seed; the published figures use other unseen seeds
    workers: int = 2
    threads: int = 2


def _render_chunk(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, start, stop, image_size = args
    pixels = np.empty((stop - start, image_size, image_size, 3), dtype=np.uint8)
    captions = []
    for k, index in enumerate(range(start, stop)):
        example = synth.pretrain_example(seed, index)
        img = synth.draw_scene(example.scene, RENDER_SIZE)
        # Same operation as open_clip's eval transform (PIL bicubic resize), so train and test match.
        pixels[k] = np.asarray(img.resize((image_size, image_size), Image.Resampling.BICUBIC))
        captions.append(example.caption)
    return pixels, captions


def render_pool(seed: int, n: int, image_size: int, workers: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` pretraining pictures as a uint8 tensor ``[n, 3, H, W]`` and their captions."""
    step = 2000
    jobs = [(seed, s, min(n, s + step), image_size) for s in range(0, n, step)]
    pixels, captions = [], []
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool, tqdm(total=n, desc="render", unit="img") as bar:
        for chunk_pixels, chunk_captions in pool.imap(_render_chunk, jobs):
            pixels.append(chunk_pixels)
            captions.extend(chunk_captions)
            bar.update(len(chunk_captions))
    return torch.from_numpy(np.concatenate(pixels)).permute(0, 3, 1, 2).contiguous(), captions


def evaluate_reading(encoder: ClipEncoder, n: int, seed: int) -> dict[str, float]:
    """Clean accuracy, attacked accuracy and attack success on ``n`` synthetic eval pictures."""
    items = synth.eval_set(n, seed, "random")
    text = encoder.classifier(synth.SHAPES)
    labels = torch.tensor([synth.SHAPES.index(it.label) for it in items])
    written = torch.tensor([synth.SHAPES.index(it.attack.text) for it in items])
    clean = (encoder.encode_images([it.clean for it in items]) @ text.T).argmax(1)
    attacked = (encoder.encode_images([it.attacked for it in items]) @ text.T).argmax(1)
    return {
        "clean_accuracy": float((clean == labels).float().mean()),
        "attacked_accuracy": float((attacked == labels).float().mean()),
        "attack_success_rate": float((attacked == written).float().mean()),
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_model_folder(model: torch.nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """Write an open_clip model folder atomically (temp names, then rename). Weights stored as fp16."""
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(MODEL_NAME)
    visual = model.visual
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
            "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp_weights = out / "open_clip_model.safetensors.tmp"
    tmp_config = out / "open_clip_config.json.tmp"
    save_file(state, str(tmp_weights), metadata=metadata)
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, out / "open_clip_model.safetensors")
    os.replace(tmp_config, out / "open_clip_config.json")


def pretrain(cfg: PretrainConfig) -> dict:
    """Train the bundled CLIP from scratch; returns the final monitoring metrics and timings."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    started = time.time()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, output_dict=True)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    pixels, captions = render_pool(cfg.seed, cfg.pool_size, image_size, cfg.workers)
    tokens = tokenizer(captions)
    render_s = time.time() - started

    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))

    cfg.out.mkdir(parents=True, exist_ok=True)
    log_path = cfg.out / "train_log.jsonl"
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(cfg.pool_size, generator=generator)
    cursor = 0
    metrics: dict[str, float] = {}
    with log_path.open("w") as log_file, tqdm(range(cfg.steps), desc="pretrain", unit="step") as bar:
        for step in bar:
            if cursor + cfg.batch_size > cfg.pool_size:
                order, cursor = torch.randperm(cfg.pool_size, generator=generator), 0
            idx = order[cursor : cursor + cfg.batch_size]
            cursor += cfg.batch_size
            images = (pixels[idx].float() / 255.0 - mean) / std
            model.train()
            out = model(images, tokens[idx])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            record = {"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step),
                      "logit_scale": round(model.logit_scale.exp().item(), 3)}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                model.eval()
                # A fresh encoder each time: its prompt-embedding cache must not outlive the text tower's weights.
                encoder = ClipEncoder(ModelSpec("pretraining", MODEL_NAME), model, preprocess, tokenizer,
                                      torch.device("cpu"))
                metrics = evaluate_reading(encoder, cfg.eval_n, cfg.eval_seed)
                record.update(metrics)
                tqdm.write(json.dumps(record))
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    train_s = time.time() - started
    summary = {
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "render_seconds": round(render_s, 1),
        "total_seconds": round(train_s, 1),
        "monitor": metrics,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    save_model_folder(model, cfg.out, {"poclip": json.dumps(summary)})
    (cfg.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
