"""Linear probes on frozen features.

``logistic_probe``: multinomial (binary: sigmoid) logistic regression fitted with full-batch L-BFGS, up to 1,000
iterations, as UNI's ``eval_patch_features/logistic_regression.py`` (after CLIP). The objective is scikit-learn's,
``C * sum_i CE_i + ||W||^2 / 2`` (bias not penalised). On the CPU scikit-learn's ``LogisticRegression(lbfgs)``
fits it (tolerance 1e-6, tighter than its default, so that large ``C`` converge); on a GPU a torch L-BFGS
(strong-Wolfe line search, as UNI's) does, and matches scikit-learn (tested). UNI fixes ``C = D * K / 100``;
here a small grid of ``C`` (default ``1e-3 ... 1e2``) is searched on the validation split (balanced accuracy,
ties to the smaller ``C``). Small problems run on one CPU thread (threads only add synchronisation there).

``svm_probe``: a linear SVM (scikit-learn ``LinearSVC``, squared hinge, one-vs-rest), the point-cloud papers'
protocol on frozen global features (Point-BERT / Point-MAE / I2P-MAE on ModelNet40; their code uses ``LinearSVC()``
at ``C = 1``); ``C`` is chosen on the validation split here (balanced accuracy, ties to the smaller ``C``), never on
test. Scores for AUROC are the softmax of the decision values.

``linear_grid``: DINOv2's linear evaluation (``dinov2/eval/linear.py``): many linear heads trained in one pass
over the same feature batches, one per (pooling x learning rate) with poolings ``cls``, ``mean``
(average of the patch tokens) and ``cls+mean``; learning rates ``1e-5 ... 0.1`` scaled by ``batch / 256``;
SGD with momentum 0.9, no weight decay, cosine decay to 0 without warmup; weights ~ N(0, 0.01), bias 0. The
heads are trained by the engine (``domainfm.engine.trainer.Trainer``); the best head on the validation split
(balanced accuracy) is reported on test.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.engine.trainer import Trainer, TrainerConfig
from domainfm.errors import ConfigError, DataError
from domainfm.evaluation.features import Features
from domainfm.evaluation.metrics import scores
from domainfm.methods.base import Method, StepContext
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger("domainfm")
DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
GRID_POOLINGS = ("cls", "mean", "both")


class LogisticModel:
    """A fitted logistic regression: ``weight`` ``(K', D)`` and ``bias`` ``(K',)``, ``K' = 1`` for two classes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, n_classes: int):
        self.weight, self.bias, self.n_classes = weight, bias, n_classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x), dtype=self.weight.dtype, device=self.weight.device)
        logits = x @ self.weight.T + self.bias
        if self.n_classes == 2:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], 1).cpu().numpy()
        return logits.softmax(-1).cpu().numpy()


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float = 1.0,
    max_iter: int = 1000,
    device: str = "cpu",
    solver: str = "auto",
) -> LogisticModel:
    """Minimise ``C * sum CE + ||W||^2 / 2``. ``solver``: ``sklearn`` (CPU), ``torch`` (L-BFGS in float64 on CPU,
    float32 on GPU, from zeros), or ``auto`` (``torch`` on CUDA, else ``sklearn``)."""
    dev = torch.device(device)
    if solver == "auto":
        solver = "torch" if dev.type == "cuda" else "sklearn"
    if solver == "sklearn":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(x)
        with warnings.catch_warnings(), _threads_for(x.size, dev):
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = LogisticRegression(C=C, tol=1e-6, max_iter=max_iter).fit(x, np.asarray(y))
        weight = torch.as_tensor(fitted.coef_, dtype=torch.float64)
        bias = torch.as_tensor(fitted.intercept_, dtype=torch.float64)
        if len(fitted.classes_) != n_classes:
            raise DataError(f"the training split holds {len(fitted.classes_)} of {n_classes} classes; add samples")
        return LogisticModel(weight, bias, n_classes)
    if solver != "torch":
        raise ConfigError(f"linear.solver={solver!r}; choose auto, sklearn or torch")
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    xs = torch.as_tensor(np.asarray(x), dtype=dtype, device=dev)
    ys = torch.as_tensor(np.asarray(y), dtype=torch.long, device=dev)
    outputs = 1 if n_classes == 2 else n_classes
    weight = torch.zeros(outputs, xs.shape[1], dtype=dtype, device=dev, requires_grad=True)
    bias = torch.zeros(outputs, dtype=dtype, device=dev, requires_grad=True)
    penalty = 1.0 / (2.0 * C * len(xs))  # the objective divided by C * N
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xs @ weight.T + bias
        if n_classes == 2:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], ys.to(dtype))
        else:
            loss = F.cross_entropy(logits, ys)
        loss = loss + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with _threads_for(xs.numel(), dev):
        opt.step(closure)
    return LogisticModel(weight.detach(), bias.detach(), n_classes)


@contextmanager
def _threads_for(size: int, device: torch.device) -> Iterator[None]:
    """One CPU thread (torch and BLAS) for small problems, where threads only add synchronisation (10x slower
    on a busy 2-core machine); unchanged otherwise."""
    if device.type != "cpu" or size >= 2**22:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def logistic_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
    select: str = "balanced_accuracy",
    device: str = "cpu",
    solver: str = "auto",
) -> tuple[LogisticModel, dict]:
    """Fit one model per ``C`` on ``train``; keep the best on ``val`` by ``select``. Returns the model and
    ``{"C": best, "val": {C: score}}``."""
    best, best_score, table = None, -np.inf, {}
    for C in Cs:
        model = fit_logistic(*train, n_classes, C=C, max_iter=max_iter, device=device, solver=solver)
        score = float(scores(val[1], model.predict_proba(val[0]))[select])
        table[float(C)] = score
        if score > best_score:
            best, best_score = (C, model), score
    return best[1], {"C": float(best[0]), "select": select, "val": table}


class SVMModel:
    """A fitted ``LinearSVC`` whose ``predict_proba`` is the softmax of its decision values (``(N, K)``)."""

    def __init__(self, svc, n_classes: int):
        self.svc, self.n_classes = svc, n_classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        d = self.svc.decision_function(np.asarray(x, dtype=np.float64))
        d = np.stack([-d, d], axis=1) / 2 if d.ndim == 1 else d
        scores = np.zeros((len(d), self.n_classes))
        scores[:, self.svc.classes_] = d
        scores[:, np.setdiff1d(np.arange(self.n_classes), self.svc.classes_)] = -np.inf
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def svm_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    max_iter: int = 10000,
    select: str = "balanced_accuracy",
) -> tuple[SVMModel, dict]:
    """``LinearSVC(C)`` per ``C`` on ``train`` (squared hinge, L2, one-vs-rest, its defaults otherwise); the best
    on ``val`` by ``select``. Returns the model and ``{"C": best, "val": {C: score}}``."""
    from sklearn.svm import LinearSVC

    best, best_score, table = None, -np.inf, {}
    for C in Cs:
        svc = LinearSVC(C=float(C), max_iter=max_iter).fit(np.asarray(train[0], np.float64), np.asarray(train[1]))
        model = SVMModel(svc, n_classes)
        score = float(scores(val[1], model.predict_proba(val[0]))[select])
        table[float(C)] = score
        if score > best_score:
            best, best_score = (C, model), score
    return best[1], {"C": float(best[0]), "select": select, "val": table}


class FeatureSet(Dataset):
    """In-memory ``(features, labels)`` as sample dicts ``{"image": vector, "label": int}``."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


class LinearHeads(Method):
    """One linear head per (pooling, learning rate) over ``[cls | mean]`` features; the loss is the sum of the
    heads' cross-entropies (each head only sees its own gradient). Heads stay separate parameters (one learning
    rate each) but the heads of one pooling are evaluated as one batched product."""

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        lrs: Sequence[float] = DINOV2_LRS,
        poolings: Sequence[str] = GRID_POOLINGS,
        batch_size: int = 256,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.keys = [(p, float(lr)) for p in poolings for lr in lrs]
        self.lr_scale = [lr * batch_size / 256.0 for _, lr in self.keys]
        self.heads = nn.ModuleList(nn.Linear(embed_dim * (2 if p == "both" else 1), n_classes) for p, _ in self.keys)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def _inputs(self, x: torch.Tensor, pooling: str) -> torch.Tensor:
        d = self.embed_dim
        return x if pooling == "both" else (x[:, :d] if pooling == "cls" else x[:, d:])

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, K)`` logits of every head, in ``keys`` order."""
        out: list[torch.Tensor] = []
        for pooling in dict.fromkeys(p for p, _ in self.keys):
            heads = [h for (p, _), h in zip(self.keys, self.heads) if p == pooling]
            weight = torch.stack([h.weight for h in heads])  # (H, K, D)
            bias = torch.stack([h.bias for h in heads])  # (H, K)
            z = torch.einsum("bd,hkd->hbk", self._inputs(x, pooling), weight) + bias[:, None]
            out += list(z.unbind(0))
        return out

    def forward(self, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        z = torch.stack(self.logits(batch["image"]))  # (H, B, K)
        labels = batch["label"].expand(len(z), -1).reshape(-1)
        return {"loss": F.cross_entropy(z.reshape(-1, z.shape[-1]), labels) * len(z)}

    def optim_groups(self) -> list[dict]:
        return [
            {"params": list(h.parameters()), "lr_scale": s, "wd_scale": 0.0} for h, s in zip(self.heads, self.lr_scale)
        ]

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> list[np.ndarray]:
        self.eval()
        xs = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.heads[0].weight.device)
        return [z.softmax(-1).cpu().numpy() for z in self.logits(xs)]


def head_name(pooling: str, lr: float) -> str:
    return f"{'cls+mean' if pooling == 'both' else pooling} lr={lr:g}"


def linear_grid(
    features: Features,
    train: np.ndarray,
    val: np.ndarray,
    n_classes: int,
    run_dir: str | Path,
    lrs: Sequence[float] = DINOV2_LRS,
    steps: int = 500,
    batch_size: int = 256,
    select: str = "balanced_accuracy",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    labels: np.ndarray | None = None,
) -> tuple[LinearHeads, int, dict]:
    """Train the grid on the ``train`` rows (indices into ``features``, which must hold ``both`` poolings) for
    ``steps`` SGD steps through the engine; pick the best head on the ``val`` rows (``labels``: default the
    features' own). Returns the heads, the
    index of the best one, and ``{"head": name, "val": {name: score}}``."""
    x = features.pooled("both")
    y = features.labels if labels is None else np.asarray(labels)
    run_dir = Path(run_dir)
    if run_dir.exists():  # a grid is cheap to retrain; stale heads from other features must not be resumed
        shutil.rmtree(run_dir)
    method = LinearHeads(features.embed_dim, n_classes, lrs, GRID_POOLINGS, batch_size)
    cfg = TrainerConfig(
        max_steps=steps,
        seed=seed,
        device=device,
        precision="fp32",
        batch_size=batch_size,
        num_workers=0,
        clip_grad=None,
        optimizer="sgd",
        lr=1.0,  # each head's learning rate is its lr_scale
        min_lr=0.0,
        warmup_steps=0,
        weight_decay=0.0,
        checkpoint_every=steps,
        keep_last=1,
        log_every=max(1, steps // 20),
        progress=progress,
        tensorboard=False,
    )
    Trainer(method, FeatureSet(x[train], y[train]), run_dir, cfg, desc="linear grid").fit()
    probs = method.predict_proba(x[val])
    table = {head_name(*key): float(scores(y[val], p)[select]) for key, p in zip(method.keys, probs)}
    best = int(np.argmax(list(table.values())))
    return method, best, {"head": head_name(*method.keys[best]), "select": select, "val": table}
