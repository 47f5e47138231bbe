"""The training loop shared by every method and domain."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from domainfm.common import distributed as dist_utils
from domainfm.common.schedules import CosineSchedule
from domainfm.data.collate import collate_samples
from domainfm.data.sampling import SeededDataset, StreamSampler
from domainfm.data.shared_batches import SharedBatches, take
from domainfm.engine.checkpoint import CheckpointManager, atomic_save, capture_rng, restore_rng
from domainfm.engine.collapse import RankMonitor
from domainfm.engine.metrics import MetricsLogger
from domainfm.engine.optim import build_optimizer
from domainfm.engine.runtime import autocast, resolve_device, resolve_precision, resolve_workers
from domainfm.engine.strategy import Strategy
from domainfm.errors import ConfigError, DataError, NonFiniteLossError
from domainfm.methods.base import Method, StepContext
from domainfm.reports.text import skipped_lines
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger("domainfm")


@dataclass
class TrainerConfig:
    max_steps: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    num_workers: int | str = "auto"
    accumulate: int = 1
    clip_grad: float | None = 3.0
    optimizer: str = "adamw"
    lr: float = 1.5e-4
    lr_scaling: str = "none"  # none | linear | sqrt
    lr_base_batch: int = 256
    min_lr: float = 1.0e-6
    warmup_steps: float = 0.05
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    rank_every: int = 100
    rank_samples: int = 256
    collapse_fraction: float = 0.01
    select: str = "last"  # last | rankme: export the checkpoint of highest RankMe (MADELEINE's smooth-rank choice)
    select_after: float = 0.0  # rankme: only ranks measured after this step (a fraction of max_steps when < 1)
    betas: tuple[float, float] = (0.9, 0.95)
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    compile: bool = False
    strategy: str = "auto"  # auto | ddp | fsdp
    skip_nonfinite: bool = False
    strict_data: bool = False
    eval_every: int = 0  # run the validate hook every N steps (and at the end); 0 = never
    patience: int = 0  # early stopping after N evaluations without improvement; 0 = off
    monitor: str = "val_loss"
    monitor_mode: str = "min"  # min | max
    resume: str = "auto"  # auto: from the newest readable checkpoint | fresh: set earlier checkpoints aside, restart

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trainer keys {unknown}; valid keys: {sorted(known)}")
        if values.get("resume", "auto") not in ("auto", "fresh"):
            raise ConfigError(f"trainer.resume={values['resume']!r}; valid values: auto, fresh")
        if values.get("select", "last") not in ("last", "rankme"):
            raise ConfigError(f"trainer.select={values['select']!r}; valid values: last, rankme")
        if values.get("select") == "rankme" and int(values.get("rank_every", 100)) <= 0:
            raise ConfigError("trainer.select=rankme needs the rank measured: set trainer.rank_every > 0")
        if values.get("lr_scaling", "none") not in ("none", "linear", "sqrt"):
            raise ConfigError(f"trainer.lr_scaling={values['lr_scaling']!r}; valid values: none, linear, sqrt")
        return cls(**values)

    def select_from(self) -> int:
        """The first step whose rank may be selected (``select_after`` as a step, or a fraction of ``max_steps``)."""
        after = self.select_after
        return int(round(after * self.max_steps)) if 0 < after < 1 else int(after)

    def peak_lr(self, world: int) -> float:
        """``lr`` after the scaling rule, for the global batch ``batch_size x world x accumulate``."""
        ratio = self.batch_size * world * self.accumulate / self.lr_base_batch
        return {"none": self.lr, "linear": self.lr * ratio, "sqrt": self.lr * math.sqrt(ratio)}[self.lr_scaling]


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    resumed_from: int
    seconds: float
    steps_per_s: float
    samples_per_s: float
    final_loss: float | None
    checkpoint: str | None
    export: str | None = None
    skipped_files: list[str] = field(default_factory=list)
    nonfinite_steps_skipped: int = 0
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    final_rank: float | None = None
    collapsed_at: int | None = None
    selected_step: int | None = None  # trainer.select=rankme: the step of the highest rank (checkpoints/best_rank.pt)
    selected_rank: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"run            {self.run_dir}",
            f"steps          {self.steps} (resumed from {self.resumed_from})"
            if self.resumed_from
            else f"steps          {self.steps}",
            f"time           {self.seconds:.1f} s  ({self.steps_per_s:.2f} steps/s, "
            f"{self.samples_per_s:.1f} samples/s)",
            f"final loss     {self.final_loss:.4f}" if self.final_loss is not None else "final loss     -",
            f"checkpoint     {self.checkpoint}",
        ]
        if self.export:
            lines.append(f"export         {self.export}")
        if self.best_step is not None:
            lines.append(f"best           {self.best_metric:.4f} at step {self.best_step}")
        if self.stopped_early:
            lines.append("stopped early  (no improvement on validation)")
        if self.final_rank is not None:
            collapsed = f"  COLLAPSING since step {self.collapsed_at}" if self.collapsed_at is not None else ""
            lines.append(f"rank (RankMe)  {self.final_rank:.1f} on the fixed batch{collapsed}")
        if self.selected_step is not None:
            lines.append(f"selected       step {self.selected_step} (highest RankMe, {self.selected_rank:.1f})")
        if self.nonfinite_steps_skipped:
            lines.append(f"non-finite     {self.nonfinite_steps_skipped} steps skipped")
        return "\n".join(lines + skipped_lines(self.skipped_files))


class Trainer:
    """Drives ``method`` over ``dataset`` (samples pass through ``transform``) for ``cfg.max_steps`` steps.

    Resumes from ``<run_dir>/checkpoints`` when it holds a checkpoint. Everything stochastic in the data
    pipeline is seeded per sample, and RNG states are checkpointed, so a resumed CPU run is bitwise identical
    to an uninterrupted one.
    """

    def __init__(
        self,
        method: Method,
        dataset: Dataset,
        run_dir: str | Path,
        cfg: TrainerConfig,
        transform: Callable | None = None,
        collate_fn: Callable = collate_samples,
        validate: Callable[[nn.Module], dict[str, float]] | None = None,
        sample_weights: torch.Tensor | None = None,
        desc: str = "train",
    ):
        """``validate(method)`` (run every ``cfg.eval_every`` steps, in eval mode, without gradients) returns
        metrics, one of which is ``cfg.monitor``; the best state goes to ``checkpoints/best.pt``.
        ``sample_weights`` switches the sampler to weighted draws with replacement (class balancing)."""
        self.cfg = cfg
        self.validate = validate
        self.sample_weights = sample_weights
        self.desc = desc
        self.run_dir = Path(run_dir)
        self.method = method
        self.dataset = dataset
        self.transform = transform
        self.collate_fn = collate_fn
        self.device = resolve_device(cfg.device)
        dist_utils.init_from_env(self.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.precision = resolve_precision(cfg.precision, self.device)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_last)
        self.peak_lr = cfg.peak_lr(self.world)
        self.lr_schedule = CosineSchedule(self.peak_lr, cfg.min_lr, warmup_steps=cfg.warmup_steps)
        self.wd_schedule = CosineSchedule(cfg.weight_decay, cfg.weight_decay_end)
        self.step = 0
        self.samples_seen = 0
        self.skipped_files: set[str] = set()
        self.nonfinite_skipped = 0
        self.resumed_from = 0
        self.step_end_times: list[float] = []  # perf_counter() at the end of each step (for benchmarks)
        self.early_stop = {"best": None, "best_step": None, "bad_evals": 0}
        self.rank_best: dict[str, float | int | None] = {"rank": None, "step": None}  # trainer.select=rankme
        self.current_lr = self.peak_lr
        self.rank_monitor: RankMonitor | None = None
        self.stopped_early = False

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.method.to(self.device)
        monitor = RankMonitor.build(
            self.method,
            self.dataset,
            self.transform,
            self.collate_fn,
            cfg.rank_samples,
            cfg.rank_every,
            cfg.collapse_fraction,
            cfg.seed + 104_729,
        )
        if monitor is not None:  # the rank at initialisation (before any wrapping; the same for a resumed run)
            monitor.begin(self.method, self.device, self.precision)
        self.strategy = Strategy.create(cfg.strategy, self.method, self.device, self.world)
        self.model = self.strategy.model
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(
            self.method,
            cfg.optimizer,
            lr=self.peak_lr,
            weight_decay=cfg.weight_decay,
            betas=tuple(cfg.betas),
            extra_no_decay=self.method.no_weight_decay(),
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        torch.manual_seed(cfg.seed + 1_000_003 * (self.rank + 1))  # runtime randomness (dropout, drop-path)
        self._resume()
        if self.step < cfg.max_steps and not self.stopped_early:  # the fixed batch costs start-up time: only to train
            self.rank_monitor = monitor
        if cfg.lr_scaling != "none" and dist_utils.is_main():
            log.info(
                "lr %.3g: %s scaling of %.3g for a global batch of %d (base %d)",
                self.peak_lr,
                cfg.lr_scaling,
                cfg.lr,
                cfg.batch_size * self.world * cfg.accumulate,
                cfg.lr_base_batch,
            )

    def _resume(self) -> None:
        found = self.checkpoints.list()
        if found and self.cfg.resume == "fresh":
            self._set_aside("fresh")
            return
        loaded = self.checkpoints.load_latest(map_location="cpu")
        if loaded is None:
            if found:  # a silent restart from step 0 would look like a resumed run
                raise DataError(
                    f"every checkpoint in {self.checkpoints.folder} is unreadable ({len(found)}, newest "
                    f"{found[-1].name}): trainer.resume=fresh restarts from step 0 and keeps them in a set-aside folder"
                )
            return
        state, path = loaded
        self.strategy.load_model_state(state["model"])
        self.strategy.load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = self.resumed_from = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.skipped_files = set(state.get("skipped_files", []))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        self.early_stop = dict(state.get("early_stop", self.early_stop))
        self.rank_best = dict(state.get("rank_best", self.rank_best))
        self.stopped_early = bool(state.get("stopped_early", False))
        rng = state["rng"]
        if len(rng) == self.world:
            restore_rng(rng[self.rank])
        else:
            log.warning(
                "checkpoint was written by %d processes, this run has %d: RNG streams restart", len(rng), self.world
            )
        if dist_utils.is_main():
            log.info("resumed from %s (step %d)", path, self.step)

    def _set_aside(self, why: str) -> None:
        if dist_utils.is_main():
            dest = self.checkpoints.set_aside(why)
            log.warning("trainer.resume=fresh: earlier checkpoints moved to %s; starting from step 0", dest)
        dist_utils.barrier()

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        workers = resolve_workers(cfg.num_workers, self.device)
        sampler = StreamSampler(
            len(self.dataset),
            cfg.batch_size,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world,
            start=self.samples_seen,
            weights=self.sample_weights,
            groups=getattr(self.dataset, "sample_groups", lambda: None)(),
        )
        return DataLoader(
            SeededDataset(self.dataset, self.transform, strict=cfg.strict_data),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            # workers hand batches over through shared slabs they reuse (fresh shared memory is slow to allocate)
            collate_fn=SharedBatches() if self.collate_fn is collate_samples and workers > 0 else self.collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            generator=torch.Generator(),  # keep the global RNG untouched by loader start-up
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    # ---------------------------------------------------------------- loop
    def fit(self) -> RunSummary:
        cfg = self.cfg
        self._setup()
        main = dist_utils.is_main()
        metrics = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, resume_step=self.step) if main else None
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not (main and cfg.progress),
            desc=self.desc,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        t0, start_step = time.perf_counter(), self.step
        last_loss: float | None = None
        window: list[float] = []
        batches = iter(self._loader()) if self.step < cfg.max_steps and not self.stopped_early else None
        self.method.train()
        try:
            while self.step < cfg.max_steps and not self.stopped_early:
                ctx = StepContext(self.step, cfg.max_steps)
                values, finite = self._train_step(batches, ctx)
                if not finite and not cfg.skip_nonfinite:
                    good = self.checkpoints.latest_path()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {self.step + 1}; last good checkpoint: {good or 'none yet'} "
                        "(lower trainer.lr, or set trainer.skip_nonfinite=true to skip such steps)"
                    )
                self.step += 1
                self.samples_seen += self.global_batch * cfg.accumulate
                if finite:
                    last_loss = values["loss"]
                    window.append(last_loss)
                else:
                    self.nonfinite_skipped += 1
                ranks = {}
                if self.rank_monitor is not None and self.rank_monitor.due(self.step, self.step == cfg.max_steps):
                    with self.strategy.gathered():
                        ranks = self.rank_monitor.measure(self.method, self.step, self.device, self.precision)
                    self._select_by_rank(ranks["rankme"])
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    rate = (self.step - start_step) / max(1e-9, time.perf_counter() - t0)
                    record = {
                        **values,
                        "loss": sum(window) / len(window) if window else float("nan"),
                        "lr": self.current_lr,
                        "steps_per_s": rate,
                        "nonfinite_skipped": self.nonfinite_skipped,
                        **ranks,
                    }
                    metrics.log(self.step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    window = []
                elif main and ranks:
                    metrics.log(self.step, ranks)
                bar.update(1)
                self.step_end_times.append(time.perf_counter())
                last = self.step == cfg.max_steps
                if self.validate is not None and cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    self._evaluate(metrics)
                if self.step % cfg.checkpoint_every == 0 or last or self.stopped_early:
                    self.save_checkpoint()
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        elapsed = time.perf_counter() - t0
        done = self.step - start_step
        skipped = sorted(set().union(*dist_utils.all_gather_object(self.skipped_files)))
        return RunSummary(
            run_dir=str(self.run_dir),
            steps=self.step,
            resumed_from=self.resumed_from,
            seconds=elapsed,
            steps_per_s=done / elapsed if elapsed > 0 else 0.0,
            samples_per_s=done * self.global_batch * cfg.accumulate / elapsed if elapsed > 0 else 0.0,
            final_loss=last_loss,
            checkpoint=str(self.checkpoints.latest_path()),
            skipped_files=skipped,
            nonfinite_steps_skipped=self.nonfinite_skipped,
            best_step=self.early_stop["best_step"],
            best_metric=self.early_stop["best"],
            stopped_early=self.stopped_early,
            final_rank=self.rank_monitor.last if self.rank_monitor is not None else None,
            collapsed_at=self.rank_monitor.collapsed_at if self.rank_monitor is not None else None,
            selected_step=self.rank_best["step"],
            selected_rank=self.rank_best["rank"],
        )

    def _select_by_rank(self, rank: float) -> None:
        """``trainer.select=rankme``: keep the weights of the highest rank measured from ``select_after`` on in
        ``checkpoints/best_rank.pt`` (the main process's value decides, so every process agrees)."""
        cfg = self.cfg
        if cfg.select != "rankme" or self.step < cfg.select_from():
            return
        best = self.rank_best["rank"]
        better = dist_utils.broadcast_object(best is None or rank > best)
        if not better:
            return
        self.rank_best = {"rank": float(rank), "step": self.step}
        state = self.strategy.model_state()  # a collective under FSDP
        if dist_utils.is_main():
            atomic_save(
                {"step": self.step, "model": state, "rankme": float(rank)}, self.checkpoints.folder / "best_rank.pt"
            )

    def _evaluate(self, metrics: MetricsLogger | None) -> None:
        cfg = self.cfg
        self.method.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            values = self.validate(self.method)
        self.method.train()
        if cfg.monitor not in values:
            raise ConfigError(f"trainer.monitor={cfg.monitor} is not among the validation metrics {sorted(values)}")
        if metrics is not None:
            metrics.log(self.step, {k: float(v) for k, v in values.items()})
        value, best = float(values[cfg.monitor]), self.early_stop["best"]
        better = best is None or (value < best if cfg.monitor_mode == "min" else value > best)
        if better:
            self.early_stop.update(best=value, best_step=self.step, bad_evals=0)
            state = self.strategy.model_state()
            if dist_utils.is_main():
                atomic_save(
                    {"step": self.step, "model": state, cfg.monitor: value}, self.checkpoints.folder / "best.pt"
                )
        else:
            self.early_stop["bad_evals"] += 1
            if cfg.patience and self.early_stop["bad_evals"] >= cfg.patience:
                self.stopped_early = True
                if dist_utils.is_main():
                    log.info(
                        "early stop at step %d: %s did not improve for %d evaluations (best %.4f at step %d)",
                        self.step,
                        cfg.monitor,
                        cfg.patience,
                        self.early_stop["best"],
                        self.early_stop["best_step"],
                    )

    def _train_step(self, batches, ctx: StepContext) -> tuple[dict[str, float], bool]:
        cfg = self.cfg
        lr = self.current_lr = self.lr_schedule(ctx.step, ctx.max_steps)
        wd = self.wd_schedule(ctx.step, ctx.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = wd * group.get("wd_scale", 1.0)
        total = 0.0
        extras: dict[str, torch.Tensor] = {}
        finite = True
        for micro in range(cfg.accumulate):
            batch = take(next(batches))
            if batch.get("skipped"):
                self.skipped_files.update(batch["skipped"])
            batch = _to_device(batch, self.device)
            sync = micro == cfg.accumulate - 1
            with self.strategy.maybe_no_sync(sync), autocast(self.device, self.precision):
                out = self.model(batch, ctx)
                loss = out["loss"] / cfg.accumulate
            value = float(loss.detach())
            ok = math.isfinite(value)
            if dist_utils.all_reduce_max(0.0 if ok else 1.0, self.device) > 0:
                ok = False
            if not ok:
                finite = False
                if not cfg.skip_nonfinite:
                    return {"loss": float("nan")}, False
                continue
            total += value
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            extras = {k: v for k, v in out.items() if k != "loss"}
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan")}, False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad:
            clip_gradients(self.method, cfg.clip_grad)
        self.method.before_optimizer_step(ctx)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step(ctx)
        values = {"loss": total}
        values.update({k: float(v) for k, v in extras.items() if _is_scalar(v)})
        return values, True

    # ---------------------------------------------------------------- state
    def save_checkpoint(self) -> None:
        model_state = self.strategy.model_state()
        optim_state = self.strategy.optimizer_state(self.optimizer)
        rng = dist_utils.all_gather_object(capture_rng())
        skipped = sorted(set().union(*dist_utils.all_gather_object(self.skipped_files)))
        if dist_utils.is_main():
            self.checkpoints.save(
                {
                    "step": self.step,
                    "samples_seen": self.samples_seen,
                    "model": model_state,
                    "optimizer": optim_state,
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "rng": rng,
                    "skipped_files": skipped,
                    "nonfinite_skipped": self.nonfinite_skipped,
                    "early_stop": self.early_stop,
                    "rank_best": self.rank_best,
                    "stopped_early": self.stopped_early,
                },
                self.step,
            )
        dist_utils.barrier()

    def full_method(self) -> nn.Module:
        """A CPU copy of the method with full (unsharded) weights; under FSDP every rank must call it."""
        return self.strategy.full_module(self.method)


def clip_gradients(method: Method, max_norm: float) -> list[torch.Tensor]:
    """Clip each of ``method.grad_clip_groups()`` (default: all parameters together) to ``max_norm``; returns the
    norms before clipping (tensors: no device sync)."""
    groups = method.grad_clip_groups() or [list(method.parameters())]
    return [torch.nn.utils.clip_grad_norm_(params, max_norm) for params in groups]


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: (v if k in ("meta", "skipped") else _to_device(v, device)) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
