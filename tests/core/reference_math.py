"""The official SSL codes' math, re-implemented independently in plain torch for the method-level tests.

Nothing here is copied: each function is written from the reference's formulas and names the file and function it
follows. Weights come in as tensors (or, for the transformer blocks the references take from timm, as the timm
modules themselves), read out of the domainfm method object by the tests, so a test compares domainfm's wiring and
loss against the reference computation on the very same parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------- common


def batch_norm_train(x, weight=None, bias=None, eps=1e-5):
    """Batch normalisation in training mode: batch mean, biased batch variance (torch ``BatchNorm1d``; TF
    ``batch_normalization(training=True)``, SimCLR's ``BATCH_NORM_EPSILON = 1e-5``)."""
    mean = x.mean(dim=0, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=0, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def vit_patch_tokens(vit, images):
    """timm ``PatchEmbed``: a stride-``p`` convolution, flattened to ``(B, N, D)`` in row-major grid order."""
    proj = vit.patch_embed.proj
    x = F.conv2d(images, proj.weight, proj.bias, stride=proj.stride)
    return x.flatten(2).transpose(1, 2)


def vit_tokens(vit, images):
    """A plain ViT forward (timm ``forward_features``; the references' encoders): patch embedding,
    ``[cls; patches] + pos_embed``, the blocks, the final norm; ``(B, 1 + N, D)``."""
    x = vit_patch_tokens(vit, images)
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


def vit_cls(vit, images):
    """The class token after the final norm (what SimCLR/MoCo v3/CLIP/DINO heads take)."""
    return vit_tokens(vit, images)[:, 0]


def vit_replace_masked(vit, mask_token, images, mask):
    """SimMIM ``models/simmim.py::VisionTransformerForSimMIM.forward`` (= DINOv2 ``prepare_tokens_with_masks``):
    masked patch embeddings replaced by the mask token, ``x * (1 - w) + mask_token * w``, before the class token and
    the position embedding; returns all tokens after the final norm ``(B, 1 + N, D)``."""
    x = vit_patch_tokens(vit, images)
    w = mask.flatten(1).unsqueeze(-1).to(x.dtype)
    x = x * (1 - w) + mask_token.to(x.dtype) * w
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


# ----------------------------------------------------------------------------------------------------- SimCLR


def simclr_projection_head(h, layers, eps=1e-5):
    """google-research/simclr ``model_util.py::projection_head`` (``proj_head_mode='nonlinear'``) built from
    ``linear_layer(use_bn=True)``: every layer is a dense layer *without* bias (``use_bias and not use_bn``) followed by
    ``batch_norm_relu(relu=False, center=use_bias)`` (scale always on); the middle layers have ``use_bias=True`` (BN
    shift) and a ReLU, the last has ``use_bias=False``: BN with scale and no shift, no ReLU.

    ``layers``: ``[(W, gamma, beta), ...]`` in order; the last layer's ``beta`` is ignored."""
    for j, (w, gamma, beta) in enumerate(layers):
        last = j == len(layers) - 1
        h = batch_norm_train(h @ w.t(), gamma, None if last else beta, eps)
        if not last:
            h = torch.relu(h)
    return h


def simclr_contrastive_loss(hidden, temperature, large_num=1e9):
    """google-research/simclr ``objective.py::add_contrastive_loss`` on one replica (``hidden_norm=True``):
    ``hidden = [view 1; view 2]``; each anchor scores the other view's ``N`` rows (its positive at its own index) and
    its own view's ``N - 1`` others (itself pushed out by ``LARGE_NUM``): ``2N - 2`` negatives. Returns
    ``(loss_a, loss_b)``, the batch-mean cross-entropies of the two directions; the official code returns their sum."""
    hidden = F.normalize(hidden, dim=-1)
    h1, h2 = hidden.chunk(2)
    n = h1.shape[0]
    self_mask = torch.eye(n, dtype=hidden.dtype) * large_num
    labels = torch.arange(n)  # one_hot(range(n), 2n) over [logits_ab, logits_aa]
    logits_aa = h1 @ h1.t() / temperature - self_mask
    logits_bb = h2 @ h2.t() / temperature - self_mask
    logits_ab = h1 @ h2.t() / temperature
    logits_ba = h2 @ h1.t() / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return loss_a, loss_b


# ----------------------------------------------------------------------------------------------------- MoCo v3


def moco_mlp(x, weights, bn_affine, last_bn=True, eps=1e-5):
    """facebookresearch/moco-v3 ``moco/builder.py::MoCo._build_mlp``: ``Linear(bias=False)`` per layer; after every
    layer but the last ``BatchNorm1d`` (affine) + ReLU; after the last ``BatchNorm1d(affine=False)`` if ``last_bn``.

    ``weights``: the Linear weights in order; ``bn_affine``: ``(gamma, beta)`` of the middle BNs."""
    for i, w in enumerate(weights):
        x = x @ w.t()
        if i < len(weights) - 1:
            x = torch.relu(batch_norm_train(x, *bn_affine[i], eps=eps))
        elif last_bn:
            x = batch_norm_train(x, eps=eps)
    return x


def moco_contrastive_loss(q, k, temperature, rank=0):
    """moco-v3 ``builder.py::MoCo.contrastive_loss``: ``k`` already gathered over all processes
    (``concat_all_gather``); ``CE(q k^T / T, arange(N) + N * rank) * 2T``."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", q, k) / temperature
    labels = torch.arange(logits.shape[0]) + logits.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


def moco_momentum(progress, m0=0.99):
    """moco-v3 ``main_moco.py::adjust_moco_momentum``: ``1 - 0.5 (1 + cos(pi epoch / epochs)) (1 - m0)``."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - m0)


# ----------------------------------------------------------------------------------------------------- MAE


def mae_patchify(imgs, p):
    """facebookresearch/mae ``models_mae.py::MaskedAutoencoderViT.patchify``: ``nchpwq -> nhwpqc``."""
    n, c, H, W = imgs.shape
    x = imgs.reshape(n, c, H // p, p, W // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (H // p) * (W // p), p * p * c)


def mae_random_masking(noise, mask_ratio):
    """``models_mae.py::random_masking`` given its ``noise``: keep the ``int(L (1 - ratio))`` lowest-noise patches.
    Returns ``ids_keep``, ``ids_restore`` and the binary mask (1 = removed) in grid order."""
    N, L = noise.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(N, L)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :len_keep], ids_restore, mask


def mae_2d_sincos(dim, grid_size):
    """facebookresearch/mae ``util/pos_embed.py::get_2d_sincos_pos_embed(cls_token=True)``: ``meshgrid(w, h)`` (w
    first), the first half of the channels embeds ``grid[0]`` (the column), the second ``grid[1]`` (the row); each half
    ``[sin(pos omega), cos(pos omega)]``, ``omega_k = 1 / 10000^(k / (D/4))``; a zero row for the class token. Cast to
    float32 as the reference copies it into its parameter."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    emb = torch.cat([one_d(dim // 2, cols), one_d(dim // 2, rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb]).float()


def mae_forward(vit, decoder, imgs, noise, mask_ratio, norm_pix_loss, p):
    """``MaskedAutoencoderViT.forward`` = ``forward_encoder`` (patch embed + pos, random masking, ``[cls + pos_cls;
    visible]``, blocks, norm), ``forward_decoder`` (``decoder_embed``, mask tokens appended and unshuffled with
    ``ids_restore``, fixed sin-cos ``decoder_pos_embed``, blocks, norm, ``decoder_pred``, class token dropped) and
    ``forward_loss`` (``norm_pix_loss``: per-patch mean and unbiased variance, ``(var + 1e-6) ** .5``; MSE per patch;
    mean over removed patches). The timm blocks are the references' own (``timm Block``); ``decoder`` gives
    ``proj`` (decoder_embed), ``mask_token``, ``blocks``, ``norm``, ``pred``. Returns ``(loss, pred, mask)``."""
    x = vit_patch_tokens(vit, imgs) + vit.pos_embed[:, 1:]
    ids_keep, ids_restore, mask = mae_random_masking(noise, mask_ratio)
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in vit.blocks:
        x = blk(x)
    x = vit.norm(x)

    x = decoder.proj(x)
    n_mask = ids_restore.shape[1] + 1 - x.shape[1]
    x_ = torch.cat([x[:, 1:], decoder.mask_token.to(x.dtype).expand(x.shape[0], n_mask, -1)], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], dim=1)
    x = x + mae_2d_sincos(x.shape[-1], int(math.isqrt(ids_restore.shape[1]))).to(x.dtype)[None]
    for blk in decoder.blocks:
        x = blk(x)
    pred = decoder.pred(decoder.norm(x))[:, 1:]

    target = mae_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum(), pred, mask


# ----------------------------------------------------------------------------------------------------- SimMIM


def simmim_loss(vit, mask_token, conv_weight, conv_bias, x, mask, patch_size, in_chans):
    """microsoft/SimMIM ``models/simmim.py::SimMIM.forward``: encoder (``VisionTransformerForSimMIM.forward``, class
    token dropped, ``(B, C, H, W)`` feature map), decoder ``Conv2d(1x1) -> PixelShuffle(stride)``, mask upsampled by the
    patch size with ``repeat_interleave``, ``sum(|x - x_rec| * mask) / (mask.sum() + 1e-5) / in_chans``."""
    z = vit_replace_masked(vit, mask_token, x, mask)[:, 1:]
    B, L, C = z.shape
    h = w = math.isqrt(L)
    z = z.permute(0, 2, 1).reshape(B, C, h, w)
    x_rec = F.pixel_shuffle(F.conv2d(z, conv_weight, conv_bias), patch_size)
    m = mask.reshape(B, h, w).to(x.dtype)
    m = m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)
    loss_recon = F.l1_loss(x, x_rec, reduction="none")
    return (loss_recon * m).sum() / (m.sum() + 1e-5) / in_chans


# ----------------------------------------------------------------------------------------------------- CLIP


def clip_loss(image_features, text_features, logit_scale_param):
    """mlfoundations/open_clip ``loss.py::ClipLoss.forward`` (one process) with the model's
    ``logit_scale.exp()`` (``model.py::CLIP.forward``) — no clamp in the loss — and normalised features:
    ``(CE(s I T^T) + CE(s T I^T)) / 2``."""
    i, t = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    s = logit_scale_param.exp()
    labels = torch.arange(i.shape[0])
    return (F.cross_entropy(s * i @ t.T, labels) + F.cross_entropy(s * t @ i.T, labels)) / 2


def siglip_loss(image_features, text_features, logit_scale_param, logit_bias):
    """open_clip ``loss.py::SigLipLoss._loss`` (one process): ``logits = s I T^T + b``, labels ``2 eye - 1``,
    ``-sum(logsigmoid(labels * logits)) / N``."""
    i, t = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale_param.exp() * i @ t.T + logit_bias
    labels = 2 * torch.eye(i.shape[0], dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / i.shape[0]


def open_clip_clamp(logit_scale):
    """open_clip ``training/train.py::train_one_epoch``: ``logit_scale.clamp_(0, math.log(100))`` after the step."""
    return logit_scale.clamp(0.0, math.log(100))


# ----------------------------------------------------------------------------------------------------- DINOv2


def sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations=3, num_samples=None):
    """facebookresearch/dinov2 ``dinov2/loss/dino_clstoken_loss.py::DINOLoss.sinkhorn_knopp_teacher`` (and
    ``ibot_patch_loss.py::iBOTPatchLoss.sinkhorn_knopp_teacher``, where ``B`` is the all-reduced number of masked
    patches: ``num_samples``) on one process, in float64: ``Q = exp(t / T)^T`` (K x B), ``Q /= sum Q``; ``n`` times:
    rows ``/= row sum``, ``/= K``; columns ``/= column sum``, ``/= B``; finally ``Q *= B``; returns ``Q^T``."""
    Q = torch.exp(teacher_output.double() / teacher_temp).t()
    B = Q.shape[1] if num_samples is None else num_samples
    K = Q.shape[0]
    Q = Q / Q.sum()
    for _ in range(n_iterations):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


def dino_cross_entropy(teacher_probs, student_logits, student_temp):
    """``DINOLoss.forward`` for one (student, teacher) pair: ``-mean_b sum_k t log_softmax(s / T_s)``."""
    return -(teacher_probs * F.log_softmax(student_logits / student_temp, dim=-1)).sum(dim=-1).mean()


def ibot_forward_masked(student_masked, teacher_masked, masks, student_temp):
    """``ibot_patch_loss.py::iBOTPatchLoss.forward_masked`` with the default ``masks_weight`` (``1 / n_masked`` of each
    sample, clamp 1): ``-sum(CE * weight) / n_samples``."""
    ce = (teacher_masked * F.log_softmax(student_masked / student_temp, dim=-1)).sum(dim=-1)
    weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return -(ce * weight).sum() / masks.shape[0]


def ibot_center_update(center, per_rank_masked_logits, momentum=0.9):
    """dinov2 ``ibot_patch_loss.py::iBOTPatchLoss.reduce_center_update`` + ``apply_center_update`` as
    ``ssl_meta_arch.py::forward_backward`` calls them: ``update_center(masked_teacher_patch_tokens_after_head[:n])``
    on the ``(1, M_r, K)`` tensor made by ``unsqueeze(0)``, so ``len() = 1`` and the batch centre is
    ``sum_r mean_i t_{r,i} / (1 * world)``: the mean over processes of each process's mean masked-patch logit."""
    per_rank_means = [t.double().mean(dim=0) for t in per_rank_masked_logits]
    batch_center = torch.stack(per_rank_means).sum(dim=0, keepdim=True) / len(per_rank_means)
    return center.double() * momentum + batch_center * (1 - momentum)


def dino_center_update(center, per_rank_logits, momentum=0.9):
    """dinov2 ``dino_clstoken_loss.py::DINOLoss.reduce_center_update`` + ``apply_center_update``: the all-reduced sum
    over the batch divided by ``len(teacher_output) * world`` (equal local batches)."""
    total = torch.cat([t.double() for t in per_rank_logits]).sum(dim=0, keepdim=True)
    batch_center = total / (per_rank_logits[0].shape[0] * len(per_rank_logits))
    return center.double() * momentum + batch_center * (1 - momentum)


def dino_v1_multicrop_loss(student_output, teacher_output, center, student_temp, teacher_temp, n_global=2):
    """DINO ``main_dino.py::DINOLoss.forward``: student outputs of all crops (globals first) and teacher outputs of
    the global crops, each ``(n_crops * B, K)``; teacher softmax of ``(t - center) / tau_t``; for every teacher
    crop ``iq`` and student crop ``v != iq``, the batch mean of ``-sum q log softmax(s / tau_s)``; averaged over
    those pairs."""
    n_crops = student_output.shape[0] // (teacher_output.shape[0] // n_global)
    student = (student_output / student_temp).chunk(n_crops)
    teacher = F.softmax((teacher_output - center) / teacher_temp, dim=-1).chunk(n_global)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
            n_terms += 1
    return total / n_terms
