"""Engine overhead: the Trainer's step time against a minimal hand-written PyTorch loop with the same model
(MAE, ViT-Tiny/8 at 64 px), loss, optimizer settings and batch, in one process; plus the real data pipeline's
throughput (bundled H&E tiles -> random view + mask) against what a training step consumes.

    .venv/bin/python benchmarks/engine_overhead.py [--steps 40] [--batch 32] [--rounds 3]

Prints a markdown table; numbers are ratios within one run (absolute times depend on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from domainfm.backbones.vit import create_vit
from domainfm.data.collate import collate_samples
from domainfm.data.folder import ImageFolder
from domainfm.data.masking import RandomPatchMask
from domainfm.data.sampling import SeededDataset, StreamSampler
from domainfm.data.shared_batches import SharedBatches, take
from domainfm.data.transforms import ImageTransform, RandomView
from domainfm.engine.optim import build_optimizer
from domainfm.engine.trainer import Trainer, TrainerConfig
from domainfm.methods.mae import MAE
from domainfm.sample_data import sample_path
from torch.utils.data import DataLoader, Dataset


class InMemory(Dataset):
    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        gen = RandomPatchMask(size // 8, 0.75)
        self.masks = torch.stack([gen() for _ in range(n)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i]}


def make_method(seed: int = 0) -> MAE:
    torch.manual_seed(seed)
    return MAE(create_vit(img_size=64, patch_size=8), decoder_dim=128, decoder_depth=2)


def hand_loop(data: Dataset, steps: int, batch: int) -> list[float]:
    method = make_method()
    opt = build_optimizer(method, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    times, it = [], iter(loader)
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        loss = method(b)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return times


def engine_loop(data: Dataset, steps: int, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainerConfig(
            max_steps=steps,
            batch_size=batch,
            num_workers=0,
            checkpoint_every=10**9,
            log_every=10,
            progress=True,
            tensorboard=True,
            lr=1e-3,
            clip_grad=3.0,
        )
        trainer = Trainer(make_method(), data, tmp, cfg)
        trainer.fit()
        return trainer.step_end_times


def per_step(times: list[float], warmup: int = 5) -> float:
    diffs = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :])]
    return statistics.median(diffs)


def loader_throughput(batch: int, workers: int, batches: int = 30) -> float:
    data = SeededDataset(
        ImageFolder(sample_path("kather2016_tiles")),
        ImageTransform(RandomView(64, [0.5] * 3, [0.25] * 3), RandomPatchMask(8, 0.75)),
    )
    loader = DataLoader(
        data,
        batch_size=batch,
        sampler=StreamSampler(len(data), batch),
        num_workers=workers,
        collate_fn=SharedBatches() if workers else collate_samples,  # as the Trainer builds it
        generator=torch.Generator(),
        drop_last=True,
    )
    it = map(take, loader)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = InMemory(256, 64)
    hand, engine = [], []
    for _ in range(args.rounds):  # interleave to share machine noise
        hand.append(per_step(hand_loop(data, args.steps, args.batch)))
        engine.append(per_step(engine_loop(data, args.steps, args.batch)))
    h, e = statistics.median(hand), statistics.median(engine)
    consume = args.batch / e
    print(f"threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} rounds={args.rounds}")
    print("| measure | value |\n|---|---|")
    print(f"| hand-written loop, s/step (median) | {h:.4f} |")
    print(f"| domainfm Trainer, s/step (median) | {e:.4f} |")
    print(f"| **engine / hand ratio** | **{e / h:.3f}** |")
    for w in (0, 2):
        tput = loader_throughput(args.batch, w)
        print(f"| data pipeline, {w} workers, samples/s | {tput:.0f} ({tput / consume:.1f}x what training consumes) |")
    print(f"| training consumes, samples/s | {consume:.0f} |")


if __name__ == "__main__":
    main()
