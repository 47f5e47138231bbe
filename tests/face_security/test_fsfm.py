"""FSFM's step against a hand computation of the official math (tiny model, random tensors), its EMA schedule,
the teacher's unmasked view, seeded CRFR-P from parsing maps, and the recipe end to end on real London faces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from domainfm.backbones.vit import create_vit  # noqa: E402
from domainfm.face_security.fsfm import FSFM  # noqa: E402
from domainfm.methods.base import StepContext  # noqa: E402


def _tiny(seed: int = 0) -> FSFM:
    torch.manual_seed(seed)
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3)
    return FSFM(vit, decoder_dim=32, decoder_depth=1, decoder_heads=2, rep_decoder_heads=3, proj_hidden=64, proj_dim=16)


def _batch(B: int = 4):
    torch.manual_seed(1)
    mask = torch.zeros(B, 16, dtype=torch.bool)
    sfr = torch.zeros(B, 16, dtype=torch.bool)
    for b in range(B):
        ids = torch.randperm(16)[:12]
        mask[b, ids] = True
        sfr[b, ids[:3]] = True
    return {"image": torch.randn(B, 3, 32, 32), "mask": mask, "sfr_mask": sfr}


def test_step_is_the_official_sum_of_three_losses():
    model, batch = _tiny(), _batch()
    out = model(batch, StepContext(0, 10))
    x, mask, sfr = batch["image"], batch["mask"], batch["sfr_mask"]
    # hand: patches (row-major, p x p x C per patch), norm-pix targets, per-patch MSE over the given patches
    B = x.shape[0]
    target = x.reshape(B, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(B, 16, 192)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    with torch.no_grad():
        encoded = model.online.encoder(x, mask, mode="drop")
        pred = model.decoder(encoded, 16)
        err = ((pred - target) ** 2).mean(-1)
        l_rec = (err * mask).sum() / mask.sum()
        l_sfr = (err * sfr).sum() / sfr.sum()
        rep = model.online.rep_decoder(encoded, 16).mean(1)
        p = model.predictor(model.online.projector(rep))
        t_enc = model.teacher.encoder(x)  # the teacher sees every patch
        z = model.teacher.projector(model.teacher.rep_decoder(t_enc, 16).mean(1))
        cos = (p * z).sum(-1) / (p.norm(dim=-1) * z.norm(dim=-1))
        l_cl = -0.5 * cos.mean()
    for key, value in (("loss_rec", l_rec), ("loss_sfr", l_sfr), ("loss_cl", l_cl)):
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], l_rec + 0.007 * l_sfr + 0.1 * l_cl, rtol=1e-5, atol=1e-6)
    # at initialisation the teacher is the online branch: its view is the unmasked face
    with torch.no_grad():
        z_online, _ = model.online(x, None, 16)
    torch.testing.assert_close(z, z_online)


def test_ema_teacher_follows_the_cosine_momentum_and_skips_the_predictor():
    model = _tiny()
    names = {n for n, _ in model.teacher.named_parameters()}
    assert any(n.startswith("rep_decoder.") for n in names) and any(n.startswith("projector.") for n in names)
    assert not any("predictor" in n or n.startswith("decoder.") for n in names)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    step, total = 3, 10
    model.after_step(StepContext(step, total))
    m = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    online = dict(model.online.named_parameters())
    for n, p in model.teacher.named_parameters():
        torch.testing.assert_close(p, m * before[n] + (1 - m) * online[n])


def test_masks_from_parsing_maps_are_seeded_by_step():
    model = _tiny()
    parsing = torch.zeros(2, 32, 32, dtype=torch.long)
    parsing[:, 8:24, 8:24] = 1
    parsing[:, 10:14, 8:24] = 4
    parsing[:, 18:22, 12:20] = 7
    batch = {"image": torch.randn(2, 3, 32, 32), "parsing": parsing}
    a, sa = model.masks(batch, 5)
    b, sb = model.masks(batch, 5)
    assert torch.equal(a, b) and torch.equal(sa, sb) and (a.sum(1) == 12).all()
    assert any(not torch.equal(a, model.masks(batch, s)[0]) for s in range(6, 10))
    with pytest.raises(KeyError, match="FSFM needs batch"):
        model.masks({"image": batch["image"]}, 0)


def test_fsfm_tiny_recipe_pretrains_on_real_faces_and_exports(tmp_path):
    from pathlib import Path

    from domainfm.backbones.loading import load_backbone
    from domainfm.cli import compose_config
    from domainfm.commands import pretrain
    from domainfm.face_security.faces import FaceParams, extract_faces

    london = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "face_research_lab_london_256"
    src = tmp_path / "in"
    src.mkdir()
    for path in sorted((london / "neutral").glob("*.jpg"))[:8]:
        (src / path.name).write_bytes(path.read_bytes())
    extract_faces(src, tmp_path / "faces", FaceParams(size=112), workers=1, progress=False)
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        ["recipe=face_security/fsfm_tiny", f"data.root={tmp_path / 'faces'}", f"run_dir={run}",
         "trainer.max_steps=3", "data.batch_size=4", "data.num_workers=0", "trainer.progress=false",
         "data.transform.scale=[0.5,1.0]", "data.transform.hflip=0.5"],
    )  # fmt: skip
    pretrain.run(cfg)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_rec", "loss_sfr", "loss_cl"} <= set(logs[-1]) and np.isfinite(logs[-1]["loss"])
    assert -0.5 <= logs[-1]["loss_cl"] <= 0.5
    model = load_backbone(str(run / "export"))
    assert model(torch.zeros(1, 3, 112, 112)).shape[0] == 1
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.5482, 0.4234, 0.3655]
