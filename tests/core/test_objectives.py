"""Objectives against independent computations on small hand-made tensors (plain numpy / python loops)."""

import math

import numpy as np
import pytest
import torch
from domainfm.objectives.clip import clip_loss, siglip_loss
from domainfm.objectives.contrastive import moco_v3_loss, negative_cosine, nt_xent_loss
from domainfm.objectives.dino import DINOLoss, sinkhorn_knopp
from domainfm.objectives.ibot import IBOTPatchLoss
from domainfm.objectives.koleo import koleo_loss
from domainfm.objectives.mae import mae_loss, patchify, unpatchify
from domainfm.objectives.simmim import simmim_loss


def _np(x):
    return x.detach().double().numpy()


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_patchify_order_and_round_trip_2d_3d():
    img = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(img, 2)
    assert p.shape == (2, 6, 12)
    # patch (row 1, col 2) = pixels [2:4, 4:6], flattened (pixel row, pixel col, channel)
    manual = img[0, :, 2:4, 4:6].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[0, 1 * 3 + 2], manual)
    assert torch.equal(unpatchify(p, (2, 3), 2, 3), img)
    vol = torch.randn(1, 2, 4, 4, 6)
    pv = patchify(vol, (2, 2, 3))
    assert pv.shape == (1, 2 * 2 * 2, 2 * 2 * 3 * 2)
    assert torch.equal(pv[0, 7], vol[0, :, 2:4, 2:4, 3:6].permute(1, 2, 3, 0).reshape(-1))
    assert torch.equal(unpatchify(pv, (2, 2, 2), (2, 2, 3), 2), vol)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    t = _np(target)
    if norm_pix:
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    per = ((_np(pred) - t) ** 2).mean(-1)
    expected = per[_np(mask) > 0].mean()
    assert mae_loss(pred, target, mask, norm_pix).item() == pytest.approx(expected, rel=1e-5)


def test_simmim_l1_on_masked_pixels():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g)
    mask = torch.tensor([[1, 0], [0, 1]])  # patches of 2x2 px: top-left and bottom-right
    diff = np.abs(_np(x) - _np(y))[0]
    masked = np.concatenate([diff[:, :2, :2].ravel(), diff[:, 2:, 2:].ravel()])
    expected = masked.sum() / 8 / 2  # 8 masked pixels, 2 channels
    assert simmim_loss(x, y, mask.reshape(1, -1), 2).item() == pytest.approx(expected, rel=1e-5)


def test_dino_cross_entropy_and_centering():
    g = torch.Generator().manual_seed(2)
    s1, s2 = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    t_logits = torch.randn(3, 6, generator=g)
    loss = DINOLoss(6, student_temp=0.1, center_momentum=0.9)
    loss.center.fill_(0.5)
    probs = loss.teacher_probs(t_logits, teacher_temp=0.04)
    tl = (_np(t_logits) - 0.5) / 0.04
    expected_p = np.exp(tl - tl.max(-1, keepdims=True))
    expected_p /= expected_p.sum(-1, keepdims=True)
    np.testing.assert_allclose(_np(probs), expected_p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_np(loss.center)[0], 0.9 * 0.5 + 0.1 * _np(t_logits).mean(0), rtol=1e-6)
    value = loss([s1, s2], [probs]).item()
    expected = sum(-(expected_p * _log_softmax(_np(s) / 0.1)).sum(-1).mean() for s in (s1, s2))
    assert value == pytest.approx(expected, rel=1e-5)


def test_sinkhorn_knopp_matches_a_plain_loop():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=g)
    q = np.exp(_np(logits) / 0.1).T  # K x B
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(1, keepdims=True) * 4
        q /= q.sum(0, keepdims=True) * 5
    expected = (q * 5).T
    out = sinkhorn_knopp(logits, 0.1)
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5)
    np.testing.assert_allclose(_np(out).sum(1), np.ones(5), rtol=1e-5)


def test_ibot_loss_per_sample_weighting():
    g = torch.Generator().manual_seed(4)
    masks = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    s = torch.randn(3, 5, generator=g)  # 3 masked patches in masks[masks] order
    t = torch.softmax(torch.randn(3, 5, generator=g), -1)
    ce = -(_np(t) * _log_softmax(_np(s) / 0.1)).sum(-1)
    expected = -(-(ce[0] + ce[1]) / 2 - ce[2] / 1) / 3  # sample 0: 2 patches, sample 2: 1; B = 3
    assert IBOTPatchLoss(5)(s, t, masks).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g)
    xn = _np(x) / np.linalg.norm(_np(x), axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1) + np.eye(6) * 1e9
    expected = -np.log(d.min(1) + 1e-8).mean()
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-4)


def test_nt_xent_matches_a_loop():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = np.concatenate([_np(z1), _np(z2)])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(6):
        pos = (i + 3) % 6
        logits = np.array([z[i] @ z[k] / 0.5 for k in range(6) if k != i])
        pos_logit = z[i] @ z[pos] / 0.5
        losses.append(-pos_logit + math.log(np.exp(logits).sum()))
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(np.mean(losses), rel=1e-5)


def test_moco_v3_loss_matches_formula():
    g = torch.Generator().manual_seed(7)
    q1, q2, k1, k2 = (torch.randn(4, 3, generator=g) for _ in range(4))

    def ctr(q, k):
        q = _np(q) / np.linalg.norm(_np(q), axis=1, keepdims=True)
        k = _np(k) / np.linalg.norm(_np(k), axis=1, keepdims=True)
        logits = q @ k.T / 0.2
        return -np.mean(np.diag(_log_softmax(logits))) * 2 * 0.2

    expected = ctr(q1, k2) + ctr(q2, k1)
    assert moco_v3_loss(q1, q2, k1, k2, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_clip_and_siglip_match_formulas():
    g = torch.Generator().manual_seed(8)
    img, txt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    scale = torch.tensor(math.log(10.0))
    a = _np(img) / np.linalg.norm(_np(img), axis=1, keepdims=True)
    b = _np(txt) / np.linalg.norm(_np(txt), axis=1, keepdims=True)
    logits = 10.0 * a @ b.T
    expected = (-np.diag(_log_softmax(logits)).mean() - np.diag(_log_softmax(logits.T)).mean()) / 2
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-5)
    bias = torch.tensor(-2.0)
    z = 10.0 * a @ b.T - 2.0
    labels = 2 * np.eye(4) - 1
    expected_sig = -np.log(1 / (1 + np.exp(-labels * z))).sum() / 4
    assert siglip_loss(img, txt, scale, bias).item() == pytest.approx(expected_sig, rel=1e-5)


def test_clip_scale_is_clamped_after_the_step_not_inside_the_loss():
    """open_clip: the loss sees exp(logit_scale) as is (so it still has a gradient past log 100 and can come back
    down); the parameter is clamped in place after the optimizer step."""
    from domainfm.objectives.clip import LogitScale

    g = torch.Generator().manual_seed(8)
    img, txt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    scales = LogitScale("clip")
    assert scales.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        scales.logit_scale.fill_(math.log(200.0))
    scales(img, txt).backward()
    assert scales.logit_scale.grad.abs().item() > 1e-4
    scales.clamp_()
    assert scales.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        scales.logit_scale.fill_(-1.0)
    scales.clamp_()
    assert scales.logit_scale.item() == 0.0
    siglip = LogitScale("siglip")  # open_clip's SigLIP init: t' = log 10, b = -10
    assert (siglip.logit_scale.item(), siglip.logit_bias.item()) == (pytest.approx(math.log(10.0)), -10.0)


def test_negative_cosine_stops_gradient_on_target():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2)
    loss.backward()
    assert z.grad is None and p.grad is not None
