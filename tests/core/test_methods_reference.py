"""Methods against the official codes' math: one full forward (and where it matters one optimizer step) of each
domainfm method on fixed small tensors, compared with an independent re-implementation of the reference forward
(``tests/core/reference_math.py``, each function naming its reference file) on the method's own weights.

The objectives alone are tested in test_objectives.py; here the whole method is: which features feed which head,
the head's layers, the loss the method returns, and the updates it makes after the step.
"""

import math

import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.methods.base import StepContext
from domainfm.methods.clip import CLIP, open_clip_text_tower
from domainfm.methods.contrastive import MoCoV3, SimCLR
from domainfm.methods.dinov2 import DINOv2
from domainfm.methods.mae import MAE
from domainfm.methods.simmim import SimMIM
from domainfm.objectives.dino import sinkhorn_knopp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tests.core import reference_math as ref

F64 = torch.float64


def _vit(depth=1):
    torch.manual_seed(0)
    return create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, depth=depth)


def _views(B=6):
    g = torch.Generator().manual_seed(11)
    return {
        "view1": torch.randn(B, 3, 32, 32, generator=g, dtype=F64),
        "view2": torch.randn(B, 3, 32, 32, generator=g, dtype=F64),
    }


def _layers(head: nn.Module) -> list[nn.Module]:
    """The Linear / BatchNorm / ReLU modules of a head, in order."""
    return [m for m in head.modules() if isinstance(m, (nn.Linear, _BatchNorm, nn.ReLU))]


def _kinds(head: nn.Module) -> list[str]:
    names = {nn.Linear: "Linear", nn.ReLU: "ReLU"}
    return [next((v for k, v in names.items() if isinstance(m, k)), "BN") for m in _layers(head)]


@torch.no_grad()
def _perturb_batchnorms(head: nn.Module, seed: int) -> None:
    """Non-trivial BN scales and shifts (init is 1 and 0), so that the reference sees whether they are applied; a shift
    that is frozen (SimCLR's ``center=False``) stays at zero."""
    g = torch.Generator().manual_seed(seed)
    for m in _layers(head):
        if isinstance(m, _BatchNorm) and m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype))
            if m.bias is not None and m.bias.requires_grad:
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))


# ----------------------------------------------------------------------------------------------------- SimCLR


def test_simclr_projector_ends_in_batchnorm_with_scale_and_no_shift():
    # model_util.py::projection_head: dense (no bias) -> BN -> ReLU per middle layer; the last layer dense (no bias)
    # -> BatchNormalization(center=False, scale=True), no ReLU
    method = SimCLR(_vit(), proj_hidden=32, proj_dim=16)
    kinds = _kinds(method.projector)
    n_layers = kinds.count("Linear")
    assert kinds == ["Linear", "BN", "ReLU"] * (n_layers - 1) + ["Linear", "BN"], kinds
    layers = _layers(method.projector)
    last_linear, last_bn = layers[-2], layers[-1]
    assert last_linear.bias is None
    assert last_bn.weight is not None and last_bn.weight.requires_grad, "the final BN has a learned scale"
    assert last_bn.bias is None or (not last_bn.bias.requires_grad and not last_bn.bias.any()), "no shift (center)"
    for bn in [m for m in layers[:-1] if isinstance(m, _BatchNorm)]:
        assert bn.weight is not None and bn.bias is not None and bn.bias.requires_grad  # center=True, scale=True


def test_simclr_loss_matches_reference():
    method = SimCLR(_vit(), proj_hidden=32, proj_dim=16, temperature=0.2).to(F64).train()
    _perturb_batchnorms(method.projector, seed=1)
    views = _views()
    loss = method(views)["loss"]

    # reference: both views through the encoder as one batch (BN statistics over 2N), then projection_head
    h = ref.vit_cls(method.backbone, torch.cat([views["view1"], views["view2"]]))
    layers = _layers(method.projector)
    pairs = [
        (lin, bn) for lin, bn in zip(layers, layers[1:]) if isinstance(lin, nn.Linear) and isinstance(bn, _BatchNorm)
    ]
    assert len(pairs) == sum(isinstance(m, nn.Linear) for m in layers), "every Linear is followed by a BN"
    z = ref.simclr_projection_head(
        h, [(lin.weight, bn.weight, bn.bias) for lin, bn in pairs]
    )  # BATCH_NORM_EPSILON 1e-5
    loss_a, loss_b = ref.simclr_contrastive_loss(z, method.temperature)
    # add_contrastive_loss returns loss_a + loss_b; domainfm (as the paper's L = 1/2N sum over all 2N anchors) takes
    # the mean of the two directions, half the official value: a constant factor
    torch.testing.assert_close(loss, (loss_a + loss_b) / 2, rtol=1e-9, atol=0)

    loss.backward()
    last_bn = layers[-1]
    assert last_bn.bias is None or last_bn.bias.grad is None, "the final BN's shift must not be trained"
    assert last_bn.weight.grad is not None and last_bn.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------- MoCo v3


def _moco(**kw):
    return MoCoV3(_vit(), hidden=32, dim=16, **kw).to(F64).train()


def _mlp_params(head):
    layers = _layers(head)
    weights = [m.weight for m in layers if isinstance(m, nn.Linear)]
    affine = [(m.weight, m.bias) for m in layers if isinstance(m, _BatchNorm) and m.affine]
    return weights, affine


def test_mocov3_projector_and_predictor_end_in_affine_free_batchnorm():
    # builder.py::MoCo_ViT: projector _build_mlp(3, D, mlp_dim, dim), predictor _build_mlp(2, dim, mlp_dim, dim), both
    # with the default last_bn=True; every Linear without bias, middle BNs affine, the last BatchNorm1d(affine=False)
    method = _moco()
    for name, head, n in (("projector", method.online.projector, 3), ("predictor", method.predictor, 2)):
        kinds = _kinds(head)
        assert kinds == ["Linear", "BN", "ReLU"] * (n - 1) + ["Linear", "BN"], (name, kinds)
        layers = _layers(head)
        assert all(m.bias is None for m in layers if isinstance(m, nn.Linear)), name
        bns = [m for m in layers if isinstance(m, _BatchNorm)]
        assert all(bn.affine for bn in bns[:-1]) and not bns[-1].affine, name


def test_mocov3_loss_matches_reference():
    method = _moco()
    _perturb_batchnorms(method.online.projector, seed=2)
    _perturb_batchnorms(method.predictor, seed=3)
    with torch.no_grad():  # a momentum branch that differs from the online one, as after some steps
        g = torch.Generator().manual_seed(4)
        for p in method.momentum_branch.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))
        _perturb_batchnorms(method.momentum_branch.projector, seed=5)
    views = _views()
    loss = method(views)["loss"]

    proj_w, proj_bn = _mlp_params(method.online.projector)
    pred_w, pred_bn = _mlp_params(method.predictor)
    mom_w, mom_bn = _mlp_params(method.momentum_branch.projector)

    def query(x):  # predictor(base_encoder(x)), one view at a time (per-view BN statistics)
        return ref.moco_mlp(ref.moco_mlp(ref.vit_cls(method.backbone, x), proj_w, proj_bn), pred_w, pred_bn)

    def key(x):
        with torch.no_grad():
            return ref.moco_mlp(ref.vit_cls(method.momentum_branch.encoder.vit, x), mom_w, mom_bn)

    x1, x2 = views["view1"], views["view2"]
    T = method.temperature
    expected = ref.moco_contrastive_loss(query(x1), key(x2), T) + ref.moco_contrastive_loss(query(x2), key(x1), T)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)


def test_mocov3_momentum_update_after_the_step():
    method = _moco()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(_views())["loss"].backward()
    opt.step()
    online = dict(method.online.named_parameters())
    before = {n: p.detach().clone() for n, p in method.momentum_branch.named_parameters()}
    assert before.keys() == online.keys()  # backbone + projector, not the predictor
    assert any(not torch.equal(before[n], online[n]) for n in before), "the step moved the online branch"

    ctx = StepContext(step=3, max_steps=10)
    method.after_step(ctx)
    m = ref.moco_momentum(ctx.step / ctx.max_steps, m0=0.99)
    for n, p in method.momentum_branch.named_parameters():
        torch.testing.assert_close(p, before[n] * m + online[n].detach() * (1 - m), rtol=0, atol=1e-15, msg=n)


# ----------------------------------------------------------------------------------------------------- MAE


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("mask_source", ["batch", "drawn"])
def test_mae_loss_matches_reference_forward(norm_pix_loss, mask_source):
    method = MAE(_vit(), mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix_loss)
    method = method.to(F64)
    g = torch.Generator().manual_seed(3)
    B, L = 3, 16
    imgs = torch.randn(B, 3, 32, 32, generator=g, dtype=F64)
    if mask_source == "batch":  # the data pipeline's mask: random_masking's for a given noise
        noise = torch.rand(B, L, generator=g)
        _, _, mask = ref.mae_random_masking(noise, 0.75)
        loss = method({"image": imgs, "mask": mask.bool()})["loss"]
    else:  # drawn by the method: the same mask as random_masking given the same random stream
        torch.manual_seed(7)
        loss = method({"image": imgs})["loss"]
        torch.manual_seed(7)
        noise = torch.rand(B, L)
        _, _, mask = ref.mae_random_masking(noise, 0.75)

    expected, pred, _ = ref.mae_forward(method.backbone, method.decoder, imgs, noise, 0.75, norm_pix_loss, p=8)
    torch.testing.assert_close(loss.to(F64), expected, rtol=1e-6, atol=0)  # mae_loss computes in float32
    torch.testing.assert_close(method.reconstruct(imgs, mask.bool()), pred, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------------- SimMIM


def test_simmim_loss_matches_reference_forward():
    method = SimMIM(_vit()).to(F64)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=g, dtype=F64)
    mask = torch.rand(3, 16, generator=g) < 0.6
    loss = method({"image": x, "mask": mask})["loss"]
    conv = method.decoder[0]
    expected = ref.simmim_loss(method.backbone, method.encoder.mask_token, conv.weight, conv.bias, x, mask, 8, 3)
    torch.testing.assert_close(loss.to(F64), expected, rtol=1e-6, atol=0)  # simmim_loss computes in float32


# ----------------------------------------------------------------------------------------------------- CLIP


def _clip(loss="clip"):
    torch.manual_seed(0)
    tower = open_clip_text_tower(embed_dim=16, width=32, heads=2, layers=1, context_length=8, vocab_size=64)
    return CLIP(_vit(), tower, embed_dim=16, loss=loss).to(F64)


def _clip_batch(B=5):
    g = torch.Generator().manual_seed(9)
    return {
        "image": torch.randn(B, 3, 32, 32, generator=g, dtype=F64),
        "text": torch.randint(1, 64, (B, 8), generator=g),
    }


def _clip_features(method, batch):
    image = ref.vit_cls(method.backbone, batch["image"]) @ method.image_proj.weight.t()
    return image, method.text_tower(batch["text"])  # open_clip's own text tower


def test_clip_loss_matches_open_clip():
    method, batch = _clip(), _clip_batch()
    loss = method(batch)["loss"]
    image, text = _clip_features(method, batch)
    torch.testing.assert_close(loss, ref.clip_loss(image, text, method.logits.logit_scale), rtol=1e-9, atol=0)


def test_clip_logit_scale_is_not_clamped_inside_the_loss():
    # open_clip multiplies by logit_scale.exp() unclamped; the clamp is on the parameter after the step. A clamp in the
    # loss would make the value wrong above log(100) and zero the gradient there (the scale could never come down).
    method, batch = _clip(), _clip_batch()
    with torch.no_grad():
        method.logits.logit_scale.fill_(math.log(200.0))
    loss = method(batch)["loss"]
    (grad,) = torch.autograd.grad(loss, method.logits.logit_scale)
    scale = method.logits.logit_scale.detach().clone().requires_grad_(True)
    image, text = _clip_features(method, batch)
    expected = ref.clip_loss(image.detach(), text.detach(), scale)
    (expected_grad,) = torch.autograd.grad(expected, scale)
    assert expected_grad.abs() > 1e-6
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("start", [math.log(200.0), -0.5, 3.0], ids=["above_log100", "below_0", "inside"])
def test_clip_after_step_clamps_the_logit_scale_in_place(kind, start):
    # training/train.py: optimizer.step(), then unwrap_model(model).logit_scale.clamp_(0, math.log(100)) (all models)
    method, batch = _clip(kind), _clip_batch()
    param = method.logits.logit_scale
    with torch.no_grad():
        param.fill_(start)
    opt = torch.optim.SGD(method.parameters(), lr=1e-3)  # a small step: stays out of range
    method(batch)["loss"].backward()
    opt.step()
    stepped = param.detach().clone()
    assert stepped != start  # the step moved it (a non-zero gradient)
    method.after_step(StepContext(0, 10))
    assert method.logits.logit_scale is param  # the same parameter, clamped in place
    torch.testing.assert_close(param.detach(), ref.open_clip_clamp(stepped), rtol=0, atol=0)


def test_siglip_initialisation_and_loss_match_reference():
    # SigLIP (Zhai et al. 2023): t' = log 10, b = -10 (open_clip SigLIP configs: init_logit_bias=-10)
    method, batch = _clip("siglip"), _clip_batch()
    assert method.logits.logit_scale.item() == pytest.approx(math.log(10.0), abs=1e-6)  # a float32 parameter
    assert method.logits.logit_bias.item() == pytest.approx(-10.0, abs=1e-6)
    with torch.no_grad():  # away from the init, so that scale and bias both matter
        method.logits.logit_scale.fill_(math.log(4.0))
        method.logits.logit_bias.fill_(-1.5)
    loss = method(batch)["loss"]
    image, text = _clip_features(method, batch)
    expected = ref.siglip_loss(image, text, method.logits.logit_scale, method.logits.logit_bias)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------------------------------- DINOv2


def _prototype_error(q):
    """Largest relative deviation of the per-prototype mass (summed over the batch) from the balanced B / K."""
    B, K = q.shape
    return ((q.sum(0) - B / K).abs() / (B / K)).max().item()


def test_sinkhorn_knopp_balances_prototypes_and_matches_reference():
    g = torch.Generator().manual_seed(12)
    B, K, temp = 24, 8, 0.07
    logits = 0.05 * torch.randn(B, K, generator=g) + 0.02 * torch.arange(K)  # prototypes of unequal popularity
    q = sinkhorn_knopp(logits, temp)
    expected = ref.sinkhorn_knopp_teacher(logits, temp)
    torch.testing.assert_close(q.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(q.double().sum(1), torch.ones(B, dtype=F64), rtol=0, atol=1e-6)  # an assignment
    # each prototype receives B / K of the mass, up to what the final column normalisation moved
    errors = [_prototype_error(ref.sinkhorn_knopp_teacher(logits, temp, n_iterations=n)) for n in (0, 1, 2, 3)]
    assert errors[0] > 0.3 and errors[1] > errors[2] > errors[3]  # softmax is unbalanced; each iteration balances
    assert _prototype_error(q.double()) < 1e-3
    # the iBOT variant: B is the number of masked patches (all-reduced), given explicitly
    q_ibot = sinkhorn_knopp(logits[:10], temp, num_samples=10)
    torch.testing.assert_close(
        q_ibot.double(), ref.sinkhorn_knopp_teacher(logits[:10], temp, num_samples=10), rtol=0, atol=1e-6
    )


def _dino_batch(B=4, n_local=2):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(B, 2, 16, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.0])[:B, None, None]
    masks[0, 0, :2] = True  # at least one masked patch; sample 3 has none (counted in n_samples, as in DINOv2)
    return {
        # local crops at the global size keep the position embedding uninterpolated (not what is tested here)
        "global_crops": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(n_local)],
        "masks": masks,
    }


def test_dinov2_sinkhorn_knopp_loss_terms_match_reference():
    method = DINOv2(_vit(), out_dim=32, hidden_dim=16, bottleneck_dim=8, centering="sinkhorn_knopp", koleo_weight=0.0)
    batch = _dino_batch()
    out = method(batch, StepContext(0, 10))
    temp, s_temp = 0.04, 0.1  # warmup_teacher_temp at step 0; student_temp
    B, n_l = 4, 2
    g = torch.cat(batch["global_crops"])
    masks = torch.cat([batch["masks"][:, 0], batch["masks"][:, 1]])
    with torch.no_grad():  # ssl_meta_arch.py::forward_backward, get_teacher_output
        t_tokens = ref.vit_tokens(method.teacher.encoder.vit, g)
        t_cls = torch.cat([t_tokens[B:, 0], t_tokens[:B, 0]])  # chunked and cat'd in reverse: A matched to B
        t_probs = ref.sinkhorn_knopp_teacher(method.teacher.head(t_cls), temp).float()
        t_patch = method.teacher.head(t_tokens[:, 1:][masks])  # the DINO head, shared (ibot_separate_head=False)
        t_patch_probs = ref.sinkhorn_knopp_teacher(t_patch, temp, num_samples=int(masks.sum())).float()
    s_tokens = ref.vit_replace_masked(method.student.encoder.vit, method.student.encoder.mask_token, g, masks)
    s_cls = method.student.head(s_tokens[:, 0])
    s_local = method.student.head(ref.vit_cls(method.student.encoder.vit, torch.cat(batch["local_crops"])))
    n_terms = 2 * 1 + 2 * n_l
    dino_global = ref.dino_cross_entropy(t_probs, s_cls, s_temp) * 2 / n_terms
    dino_local = sum(ref.dino_cross_entropy(t, s, s_temp) for s in s_local.chunk(n_l) for t in t_probs.chunk(2))
    s_patch = method.student.head(s_tokens[:, 1:][masks])
    ibot = ref.ibot_forward_masked(s_patch, t_patch_probs, masks, s_temp) * 2 * (1 / 2)  # loss_scales * ibot_loss_scale
    torch.testing.assert_close(out["dino_global"], dino_global.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["dino_local"], (dino_local / n_terms).detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["ibot"], ibot.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss"], (dino_global + dino_local / n_terms + ibot).detach(), rtol=1e-5, atol=1e-7)
