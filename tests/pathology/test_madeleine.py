"""MADELEINE: the slide encoder against the official layout, the loss against a hand computation, the multistain
bags (synthetic feature files: no real multistain feature archive exists; the real-image run is in
test_madeleine_recipe.py)."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from domainfm.errors import DataError
from domainfm.methods.base import StepContext
from domainfm.pathology.graph_ot import graph_ot
from domainfm.pathology.madeleine import Madeleine, MadeleineSlideEncoder, info_nce
from domainfm.pathology.multistain import MultistainBags, stain_key
from domainfm.pathology.synthetic_bags import make_multistain_bags
from torch import nn


def _encoder(**kw) -> MadeleineSlideEncoder:
    torch.manual_seed(0)
    args = dict(in_dim=12, stains=["HE", "A", "B"], hidden=8, heads=3, attn_hidden=5, stain_dim=4, token_dim=6)
    return MadeleineSlideEncoder(**{**args, **kw}).eval()


def test_slide_encoder_matches_the_official_per_head_layout():
    enc = _encoder()
    x = torch.randn(2, 10, 12)
    slide, tokens, attention = enc.encode(x, torch.tensor([1, 2]))
    # the official forward, written out: concat stain code, MLP, rearrange 'b t (e c) -> b t e c', one BatchedABMIL
    # (Linear a / Linear b / Linear c) per head, softmax over tokens, sum, flatten e-major, projector
    code = enc.stain_embed(torch.tensor([1, 2]))[:, None].expand(-1, 10, -1)
    h = enc.pre_attn(torch.cat([x, code], -1))
    e = h.reshape(2, 10, 8, 3)
    pooled = torch.zeros(2, 8, 3)
    for i in range(3):
        lin_a, lin_b, lin_c = nn.Linear(8, 5), nn.Linear(8, 5), nn.Linear(5, 1)
        with torch.no_grad():
            lin_a.weight.copy_(enc.attention.w_a[i].T), lin_a.bias.copy_(enc.attention.b_a[i])
            lin_b.weight.copy_(enc.attention.w_b[i].T), lin_b.bias.copy_(enc.attention.b_b[i])
            lin_c.weight.copy_(enc.attention.w_c[i][None]), lin_c.bias.copy_(enc.attention.b_c[i : i + 1])
        a = lin_c(torch.tanh(lin_a(e[..., i])) * torch.sigmoid(lin_b(e[..., i])))  # (B, N, 1)
        att = F.softmax(a, dim=1)
        torch.testing.assert_close(att[..., 0], attention[..., i])
        pooled[..., i] = (e[..., i] * att).sum(1)
    torch.testing.assert_close(slide, enc.projector(pooled.reshape(2, 24)))
    torch.testing.assert_close(tokens, enc.token_projector(h))
    assert slide.shape == (2, 8) and tokens.shape == (2, 10, 6)


def test_slide_encoder_codes_follow_the_batch_and_padding_is_ignored():
    enc = _encoder()
    x = torch.randn(3, 7, 12)
    stains = torch.tensor([0, 2, 1])
    batched = enc.encode(x, stains)[0]
    for b in range(3):  # each row encoded with its own stain code (the official stain_indicator mixes them)
        torch.testing.assert_close(batched[b], enc.encode(x[b : b + 1], int(stains[b]))[0][0])
    padded = torch.cat([x[:1], torch.randn(1, 5, 12) * 100], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 5])
    torch.testing.assert_close(enc.encode(padded, 0, mask)[0], enc.encode(x[:1], 0)[0])
    tokens = enc.forward_features(x)
    assert tokens.shape == (3, 8, 8)
    torch.testing.assert_close(tokens[:, 0], enc(x))  # cls = the H&E slide embedding
    torch.testing.assert_close(tokens[:, 1:].mean(1), enc.projector(enc.embed_patches(x, 0).mean(1)))


def test_info_nce_by_hand():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    cos = torch.tensor([[float(F.cosine_similarity(a[i], b[j], dim=0)) for j in range(4)] for i in range(4)])
    logits = cos / 0.07
    row = -torch.log_softmax(logits, 1).diagonal().mean()
    col = -torch.log_softmax(logits, 0).diagonal().mean()
    assert info_nce(a, b, 0.07).item() == pytest.approx(0.5 * (row + col).item(), rel=1e-5)
    assert info_nce(a, b, 0.07, symmetric=False).item() == pytest.approx(row.item(), rel=1e-5)


def test_madeleine_loss_masks_missing_stains_and_sums_stains():
    torch.manual_seed(1)
    enc = _encoder(dropout=0.0, attn_dropout=0.0)
    method = Madeleine(enc, temperature=0.1, local_tokens=None)
    feats = torch.randn(4, 3, 9, 12)
    # stain A in slides 0, 1, 3; stain B only in slide 2 (one slide: no negative, no term, as the official rule)
    present = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    out = method({"features": feats, "present": present}, StepContext(0, 1))
    assert set(out) == {"loss", "nce_A", "got_A"}
    he = enc.encode(feats[[0, 1, 3], 0], 0)
    st = enc.encode(feats[[0, 1, 3], 1], 1)
    nce = info_nce(he[0], st[0], 0.1)
    got = graph_ot(he[1], st[1]).sum()
    assert out["nce_A"].item() == pytest.approx(nce.item(), rel=1e-5)
    assert out["got_A"].item() == pytest.approx(got.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((nce + got).item(), rel=1e-5)
    feats2 = feats.clone()
    feats2[~present] = torch.randn(int((~present).sum()), 9, 12) * 50  # what a missing stain holds is never read
    assert method({"features": feats2, "present": present}, StepContext(0, 1))["loss"].item() == pytest.approx(
        out["loss"].item(), rel=1e-6
    )
    none = method({"features": feats, "present": torch.eye(4, 3, dtype=torch.bool)}, StepContext(0, 1))
    assert none["loss"].item() == 0.0 and none["loss"].requires_grad


def test_madeleine_step_reduces_the_loss():
    enc = _encoder(dropout=0.0, attn_dropout=0.0).train()
    method = Madeleine(enc, temperature=0.1, local_tokens=8)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 1, 20, 12, generator=g)
    feats = base + 0.1 * torch.randn(6, 3, 20, 12, generator=g)  # three stains of one tissue, alike
    batch = {"features": feats, "present": torch.ones(6, 3, dtype=torch.bool)}
    first = method(batch, StepContext(0, 30))["loss"].item()
    for step in range(30):
        loss = method(batch, StepContext(step, 30))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def _write(path, n, dim=4, value=0.0):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.arange(n * dim, dtype=np.float32).reshape(n, dim) + value)


def test_multistain_bags_read_draw_and_report(tmp_path):
    _write(tmp_path / "t1_he.h5", 10)
    _write(tmp_path / "t1_ki.h5", 3, value=1000)
    _write(tmp_path / "t2_he.h5", 5)
    _write(tmp_path / "t3_ki.h5", 5)  # no H&E: left out
    (tmp_path / "t4_he.h5").write_bytes(b"not an h5 file")  # corrupt: skipped and counted
    rows = [("t1", "H&E", "t1_he.h5", "p1"), ("t1", "Ki-67", "t1_ki.h5", "p1"), ("t2", "he", "t2_he.h5", "p2"),
            ("t3", "KI67", "t3_ki.h5", "p3"), ("t4", "HE", "t4_he.h5", "p4")]  # fmt: skip
    with (tmp_path / "ms.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "stain", "path", "patient"), *rows])
    bags = MultistainBags(tmp_path / "ms.csv", stains=["HE", "KI67", "CD31"], n_patches=6)
    assert bags.ids == ["t1", "t2"] and bags.no_anchor == 2 and len(bags.skipped) == 1
    assert "t4_he.h5" in bags.skipped[0]
    torch.manual_seed(0)
    s = bags[0]
    assert s["features"].shape == (3, 6, 4) and s["present"].tolist() == [True, True, False]
    he_rows = (s["features"][0, :, 0] / 4).long()
    assert len(set(he_rows.tolist())) == 6  # 10 patches: drawn without replacement
    ki_rows = ((s["features"][1, :, 0] - 1000) / 4).long()
    assert set(ki_rows.tolist()) <= {0, 1, 2}  # 3 patches: drawn with replacement up to 6
    assert torch.all(s["features"][2] == 0)
    torch.manual_seed(0)
    assert torch.equal(bags[0]["features"], s["features"])  # the sample's seed decides the draw
    assert stain_key("H&E") == stain_key("he") and stain_key("Ki-67") == "ki67"


def test_multistain_bags_errors_name_the_fix(tmp_path):
    _write(tmp_path / "a.h5", 4)
    with (tmp_path / "ms.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "stain", "path"), ("t1", "HE", "a.h5"), ("t1", "PD-L1", "a.h5")])
    with pytest.raises(DataError, match=r"stains \['PD-L1'\] are not in data.stains.*data.stains=\[HE,PD-L1\]"):
        MultistainBags(tmp_path / "ms.csv", stains=["HE", "KI67"])
    with (tmp_path / "slides.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "stain", "path"), ("t1", "HE", "t1.svs")])
    with pytest.raises(DataError, match="t1.svs is a slide.*domainfm tile and domainfm extract"):
        MultistainBags(tmp_path / "slides.csv", stains=["HE"])
    with (tmp_path / "bad.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide", "path"), ("t1", "a.h5")])
    with pytest.raises(DataError, match="needs columns slide_id,stain,path"):
        MultistainBags(tmp_path / "bad.csv", stains=["HE"])


def test_synthetic_bags_plant_the_label(tmp_path):
    ms, labels = make_multistain_bags(tmp_path, n_tissues=6, dim=8, patches=(10, 12), seed=0)
    bags = MultistainBags(ms, stains=["HE", "MARKER", "IHC2"], n_patches=16)
    assert len(bags) == 6 and bags.dim == 8
    with labels.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == bags.ids and {r["label"] for r in rows} == {"positive", "negative"}


def test_synthetic_label_is_in_the_he_spread_not_the_he_mean(tmp_path):
    """The planted label (share r of the last type) moves the marker stain's slide mean, not the H&E slide mean: in
    H&E that type straddles its neighbour (+- he_gap), so only the spread of those patches tells r."""
    ms, labels = make_multistain_bags(
        tmp_path, n_tissues=40, dim=8, patches=(2000, 2000), noise=0.0, offset=0.0, missing=0.0, seed=1
    )
    with labels.open() as f:
        positive = np.array([r["label"] == "positive" for r in csv.DictReader(f)])

    def class_gap(stain: str) -> float:
        means = np.stack([h5py.File(tmp_path / "features" / f"T{t:04d}_{stain}.h5")["features"][:].mean(0)
                          for t in range(40)])  # fmt: skip
        return float(np.linalg.norm(means[positive].mean(0) - means[~positive].mean(0)))

    assert class_gap("MARKER") > 0.2 and class_gap("HE") < 0.3 * class_gap("MARKER")
