"""Trainer behaviour on small hand-made methods and data."""

import math
import shutil

import pytest
import torch
from domainfm.common.schedules import CosineSchedule, LinearWarmupSchedule
from domainfm.data.folder import ImageFolder
from domainfm.engine.optim import param_groups
from domainfm.engine.trainer import Trainer, TrainerConfig
from domainfm.errors import DataError, NonFiniteLossError
from domainfm.methods.base import Method
from torch import nn


class VectorData(torch.utils.data.Dataset):
    """Synthetic: 32 fixed random vectors."""

    def __init__(self, n=32, d=4):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, d, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}


class Regress(Method):
    """Least squares towards a fixed target; NaN loss at the given 0-based steps."""

    def __init__(self, nan_at=()):
        super().__init__()
        self.backbone = nn.Linear(4, 2)
        self.nan_at = set(nan_at)

    def forward(self, batch, ctx):
        loss = (self.backbone(batch["image"]) - 1.0).pow(2).mean()
        if ctx.step in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}


class MeanColour(Method):
    """The square of a linear map of the images' mean colour."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 1)

    def forward(self, batch, ctx):
        return {"loss": self.backbone(batch["image"].mean((2, 3))).pow(2).mean()}


def _cfg(**kw):
    base = dict(
        max_steps=6,
        batch_size=4,
        num_workers=0,
        checkpoint_every=2,
        progress=False,
        tensorboard=False,
        lr=0.05,
        warmup_steps=0,
        log_every=1,
    )
    base.update(kw)
    return TrainerConfig(**base)


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(Regress(nan_at={4}), VectorData(), tmp_path, _cfg())
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at step 5; last good checkpoint: .*step_00000004\.pt"
    ):
        trainer.fit()
    assert [p.name for p in trainer.checkpoints.list()] == ["step_00000002.pt", "step_00000004.pt"]


def test_skip_nonfinite_counts_and_continues(tmp_path):
    torch.manual_seed(0)
    method = Regress(nan_at={1, 3})
    summary = Trainer(method, VectorData(), tmp_path, _cfg(skip_nonfinite=True)).fit()
    assert summary.steps == 6 and summary.nonfinite_steps_skipped == 2
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_gradient_accumulation_matches_large_batch(tmp_path):
    torch.manual_seed(0)
    a = Regress()
    b = Regress()
    b.load_state_dict(a.state_dict())
    Trainer(a, VectorData(), tmp_path / "a", _cfg(batch_size=8, clip_grad=None)).fit()
    Trainer(b, VectorData(), tmp_path / "b", _cfg(batch_size=4, accumulate=2, clip_grad=None)).fit()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_unreadable_images_are_skipped_counted_and_named(tmp_path, kather_tiles):
    root = tmp_path / "images"
    shutil.copytree(kather_tiles, root)
    (root / "01_TUMOR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = next((root / "02_STROMA").glob("*.tif"))
    (root / "02_STROMA" / "cut.tif").write_bytes(good.read_bytes()[:600])
    from domainfm.data.transforms import ImageTransform, RandomView

    transform = ImageTransform(RandomView(16, [0.5] * 3, [0.25] * 3))
    summary = Trainer(
        MeanColour(), ImageFolder(root), tmp_path / "run", _cfg(batch_size=13, max_steps=4), transform=transform
    ).fit()
    names = sorted(s.split(":")[0].rsplit("/", 1)[-1] for s in summary.skipped_files)
    assert names == ["broken.png", "cut.tif"]
    assert "skipped files  2" in summary.render()

    strict = Trainer(
        MeanColour(),
        ImageFolder(root),
        tmp_path / "strict",
        _cfg(batch_size=13, max_steps=4, strict_data=True),
        transform=transform,
    )
    with pytest.raises(DataError, match=r"(broken\.png|cut\.tif): unreadable .*data\.strict=false"):
        strict.fit()


def test_no_weight_decay_for_norms_biases_and_tokens():
    from domainfm.backbones.vit import create_vit

    vit = create_vit(img_size=32, patch_size=8, depth=1)
    groups = {g["name"]: g for g in param_groups(vit)}
    names = {id(p): n for n, p in vit.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decay
    assert groups["no_decay"]["wd_scale"] == 0.0


def test_cosine_schedule_values():
    s = CosineSchedule(1.0, 0.0, warmup_steps=10, warmup_start=0.0)
    assert s(0, 110) == 0.0
    assert s(5, 110) == pytest.approx(0.5)
    assert s(10, 110) == pytest.approx(1.0)
    assert s(60, 110) == pytest.approx(0.5)
    assert s(110, 110) == pytest.approx(0.0)
    assert CosineSchedule(0.996, 1.0)(50, 100) == pytest.approx(0.998)
    t = LinearWarmupSchedule(0.04, 0.07, warmup_steps=0.3)
    assert t(0, 100) == pytest.approx(0.04) and t(15, 100) == pytest.approx(0.055) and t(90, 100) == 0.07
    assert math.isclose(CosineSchedule(2.0)(7, 9), 2.0)


def test_validation_keeps_best_and_stops_early(tmp_path):
    """Synthetic: a validation score that peaks at step 4 then worsens; patience 2 stops at step 8."""
    torch.manual_seed(0)
    scores = {2: 0.5, 4: 0.2, 6: 0.3, 8: 0.4, 10: 0.1}
    calls = []

    def validate(method):
        assert not method.training and not torch.is_grad_enabled()
        step = 2 * (len(calls) + 1)
        calls.append(step)
        return {"val_loss": scores[step]}

    cfg = _cfg(max_steps=12, eval_every=2, patience=2, checkpoint_every=100)
    trainer = Trainer(Regress(), VectorData(), tmp_path, cfg, validate=validate)
    summary = trainer.fit()
    assert calls == [2, 4, 6, 8]
    assert summary.stopped_early and summary.steps == 8
    assert summary.best_step == 4 and summary.best_metric == pytest.approx(0.2)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 4 and best["val_loss"] == pytest.approx(0.2)
    # resuming a stopped run does not train further
    again = Trainer(Regress(), VectorData(), tmp_path, cfg, validate=validate).fit()
    assert again.steps == 8 and calls == [2, 4, 6, 8]


def test_weighted_sampler_balances_classes():
    from domainfm.data.sampling import StreamSampler

    labels = torch.tensor([0] * 90 + [1] * 10)
    counts = torch.bincount(labels).double()
    weights = (1.0 / counts)[labels]
    it = iter(StreamSampler(100, 50, seed=1, weights=weights))
    drawn = torch.tensor([labels[next(it)[0]] for _ in range(4000)])
    frac = drawn.float().mean().item()
    assert 0.45 < frac < 0.55  # ~50 % minority instead of 10 %


class RecordingRegress(Regress):
    """Least squares that records each batch and the dtype its linear layer computed in."""

    def __init__(self):
        super().__init__()
        self.batches, self.dtypes = [], []

    def forward(self, batch, ctx):
        self.batches.append(batch["image"].clone())
        out = self.backbone(batch["image"])
        self.dtypes.append(out.dtype)
        return {"loss": (out.float() - 1.0).pow(2).mean()}


def test_bf16_autocast_on_cpu_computes_in_bf16_and_keeps_fp32_weights(tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        method = RecordingRegress()
        Trainer(method, VectorData(), tmp_path / precision, _cfg(precision=precision, max_steps=4)).fit()
        runs[precision] = method
    assert set(runs["bf16"].dtypes) == {torch.bfloat16} and set(runs["fp32"].dtypes) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in runs["bf16"].parameters())
    w16, w32 = runs["bf16"].backbone.weight, runs["fp32"].backbone.weight
    assert torch.allclose(w16, w32, atol=0.05) and not torch.equal(w16, w32)


def test_fp16_grad_scaler_skips_overflow_unscales_before_clipping_and_resumes(tmp_path, monkeypatch):
    """fp16 + GradScaler is a CUDA setting; its logic is the same on CPU (torch has a CPU GradScaler and fp16
    autocast), so the precision check is bypassed here and the trainer compared with torch's AMP recipe."""
    import domainfm.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda name, device: "fp16")
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(trainer_module.torch.amp, "GradScaler", lambda device: real_scaler(device, 2.0**20))
    cfg = _cfg(precision="fp16", clip_grad=0.05, min_lr=0.05, weight_decay=0.0, max_steps=8, checkpoint_every=4)
    torch.manual_seed(0)
    method = RecordingRegress()
    trainer = Trainer(method, VectorData(), tmp_path / "full", cfg)
    start = {k: v.clone() for k, v in method.state_dict().items()}
    trainer.fit()
    assert set(method.dtypes) == {torch.float16}
    final_scale = trainer.scaler.get_scale()
    assert final_scale < 2.0**20  # the first steps overflowed in fp16 and were skipped

    # torch's documented recipe on the same batches: scale -> backward -> unscale_ -> clip -> step -> update
    ref = Regress()
    ref.load_state_dict(start)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, betas=(0.9, 0.95), weight_decay=0.0)
    scaler = real_scaler("cpu", 2.0**20)
    skipped = 0
    for x in method.batches:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = (ref.backbone(x).float() - 1.0).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        opt.zero_grad(set_to_none=True)
    assert skipped >= 1 and scaler.get_scale() == final_scale
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(method.state_dict()[name], value)

    # the scaler's state is checkpointed: a run resumed from step 4 ends where the uninterrupted one did
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "step_00000008.pt").unlink()
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert state["step"] == 4 and state["scaler"]["scale"] < 2.0**20
    torch.manual_seed(0)
    resumed = RecordingRegress()
    again = Trainer(resumed, VectorData(), tmp_path / "resumed", cfg)
    assert again.fit().resumed_from == 4 and again.scaler.get_scale() == final_scale
    for name, value in method.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


def test_loader_workers_train_exactly_as_the_main_process(tmp_path, kather_tiles, monkeypatch):
    """With 2 loader workers the batches come through reused shared slabs (``SharedBatches``) and training is
    bitwise the same as reading everything in the main process (views are seeded per sample)."""
    import domainfm.engine.trainer as trainer_module
    from domainfm.data.shared_batches import take
    from domainfm.data.transforms import ImageTransform, RandomView

    kinds = []
    monkeypatch.setattr(trainer_module, "take", lambda batch: kinds.append(type(batch).__name__) or take(batch))
    transform = ImageTransform(RandomView(16, [0.5] * 3, [0.25] * 3))
    methods = []
    for workers in (0, 2):
        torch.manual_seed(0)
        methods.append(MeanColour())
        cfg = _cfg(batch_size=8, max_steps=5, num_workers=workers)
        Trainer(methods[-1], ImageFolder(kather_tiles), tmp_path / f"w{workers}", cfg, transform=transform).fit()
    assert kinds == ["dict"] * 5 + ["SlabBatch"] * 5
    for a, b in zip(methods[0].parameters(), methods[1].parameters()):
        assert torch.equal(a, b)


def test_only_unreadable_files_is_one_error_with_counts_by_reason(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        (root / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "empty.jpg").write_bytes(b"")
    from domainfm.data.sampling import SeededDataset

    with pytest.raises(DataError) as err:
        SeededDataset(ImageFolder(root))[0]
    message = str(err.value)
    assert message.startswith("every sample is unreadable (3 OSError, 1 UnidentifiedImageError; first: ")
    assert message.count(str(root)) == 3 and message.endswith("): check the data")  # the first three, named
