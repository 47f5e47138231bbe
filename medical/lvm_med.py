"""LVM-Med: self-supervised learning by second-order graph matching (Nguyen et al., NeurIPS 2023, arXiv 2306.11925,
Sec. 3.2 and Appendix). No public pretraining code exists; this is a labelled reimplementation from the paper.

For a batch of images, two augmented views s and t; ``z = projector(cls(encoder(x)))`` (128-d; ``global_pool=mean``:
the mean of the patch tokens, the ViT's counterpart of the ResNet-50's global average pool). The batch is split
into graphs of ``graph_size`` consecutive images (16); in each view's graph, node ``i`` has directed edges to its
``k`` nearest neighbours by cosine of ``z`` (5; chosen without gradient). A shared 2-layer GCN (torch-geometric
``GCNConv``, width 128, ReLU between) gives node features ``h``. Affinities between node ``i`` of s and ``a`` of t:

    c_v[i, a] = alpha * cos(h_i^s, h_a^t) + (1 - alpha) * (c_lo(i, a) + c_lo(a, i)),          alpha = 0.8
    c_lo(i, a) = mean_p max_q cos(f_p^{s,i}, f_q^{t,a})       (f: the encoder's patch tokens; i != a)
    c_lo(i, i) = mean_p cos(f_p^{s,i}, f_g(p)^{t,i})            (g(p): the token of view t at the same image point)
    c_e[(i, j), (a, b)] = cos(z_i^s - z_j^s, z_a^t - z_b^t)

The matching ``v = GM(c_v, c_e)`` maximises ``sum c_v v + sum c_e v v`` over permutations
(:func:`domainfm.medical.graph_matching.solve_qap`); the loss is the Hamming distance between ``v`` and the
identity (the true correspondence: both views of an image), ``sum v (1 - I) + (1 - v) I``, divided by ``n`` and
averaged over graphs. Gradients through the solver with IMLE (Niepert et al. 2021): forward on vertex affinities
perturbed with ``noise_scale`` x Gumbel(0, 1) noise, ``v = GM(c_v + eps, c_e)``; backward with target
``v' = GM(c_v + eps - lambda dL/dv, c_e)``: ``dL/dc_v = (v - v') / lambda`` and, for the quadratic term,
``dL/dc_e = (y(v) - y(v')) / lambda`` with ``y[(i,j),(a,b)] = v_ia v_jb``; ``lambda = 80``.

Defaults from the paper: 128-d projection, graphs of 16, 5 neighbours, 2-layer GCN of width 128, alpha 0.8,
lambda 80, Gumbel(0, 1) noise. Paper-scale training (for the record): ResNet-50 (ImageNet init) or ViT-B, batch
3,200, Adam lr 2e-3, 100 epochs. Deviations (ours): the core ViT backbone; the projector is a 2-layer MLP with
BatchNorm (hidden 2048; the paper does not give it); ``c_lo`` matches the local features of the two views of one
image by the known augmentation geometry (``local_match=geometry``, the default: each token's cell centre mapped
through both views' crops and flips, :func:`geometric_partners`; a token whose point lies outside the other crop
falls back to its nearest feature) and those of different images by nearest feature (the paper's two rules, our
reading of how they combine; ``local_match=feature`` uses nearest features everywhere); only the vertex affinities
are perturbed (the paper does not say which costs the noise enters); a local-search QAP solver (see graph_matching).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from domainfm.backbones.masked_vit import MaskedViT
from domainfm.backbones.tokens import is_vit
from domainfm.medical.graph_matching import solve_qap
from domainfm.methods.base import Method, StepContext
from domainfm.methods.heads import MLPHead
from torch import nn


def knn_edges(z: torch.Tensor, k: int) -> torch.Tensor:
    """Directed edges ``(2, n * k)``: node ``i`` -> its ``k`` nearest other nodes by cosine (``k <= n - 1``)."""
    n = z.shape[0]
    k = min(k, n - 1)
    zn = F.normalize(z.detach().float(), dim=-1)
    sim = zn @ zn.T
    sim.fill_diagonal_(-float("inf"))
    nbrs = sim.topk(k, dim=1).indices
    src = torch.arange(n, device=z.device).repeat_interleave(k)
    return torch.stack([src, nbrs.reshape(-1)])


def local_affinity(f_s: torch.Tensor, f_t: torch.Tensor, partners: torch.Tensor | None = None) -> torch.Tensor:
    """``c_lo[i, a] = mean_p max_q cos(f_s[i, p], f_t[a, q])`` for tokens ``f`` of shape ``(n, P, D)``.
    ``partners`` ``(n, P)``: for the two views of the same image (``i == a``), token ``p`` is matched to the token
    ``partners[i, p]`` of view t that covers the same place of the image (the known augmentation geometry,
    :func:`geometric_partners`) instead of its nearest feature; ``-1`` (outside the other crop) keeps the nearest."""
    a, b = F.normalize(f_s.float(), dim=-1), F.normalize(f_t.float(), dim=-1)
    sim = torch.einsum("ipd,aqd->iapq", a, b)
    best = sim.max(dim=-1).values  # (n, n, P)
    if partners is not None:
        same = torch.arange(a.shape[0], device=a.device)
        own = sim[same, same]  # (n, P, P): same image, both views
        geo = own.gather(2, partners.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        best = best.clone()
        best[same, same] = torch.where(partners >= 0, geo, best[same, same])
    return best.mean(dim=-1)


def geometric_partners(params_s: dict, params_t: dict, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """``(B, P)``: for each token of view s (a cell of the ``grid`` = ``(h, w)`` over the ``size`` = ``(H, W)`` view: a
    ViT's patches, a CNN's final feature map), the
    index of the view-t token whose cell holds the same image point (the cell centre mapped back through s's
    flips and resized crop to the source image, then forward through t's), ``-1`` where that point is outside t's
    crop. ``params_*``: the batched :class:`~domainfm.data.transforms.CropParams` of the views (``top``, ``left``,
    ``height``, ``width`` in source pixels, ``hflip``, ``vflip``)."""
    h, w = size
    gh, gw = grid
    ch, cw = h / gh, w / gw  # cell size in view pixels
    rows = (torch.arange(gh, dtype=torch.float64) + 0.5) * ch
    cols = (torch.arange(gw, dtype=torch.float64) + 0.5) * cw
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    y, x = y.reshape(1, -1), x.reshape(1, -1)  # (1, P) cell centres in view pixels

    def col(params, key):
        return torch.as_tensor(params[key]).reshape(-1, 1).to(torch.float64)

    y = torch.where(col(params_s, "vflip") > 0, h - y, y)
    x = torch.where(col(params_s, "hflip") > 0, w - x, x)
    src_y = col(params_s, "top") + y * col(params_s, "height") / h
    src_x = col(params_s, "left") + x * col(params_s, "width") / w
    ty = (src_y - col(params_t, "top")) * h / col(params_t, "height")
    tx = (src_x - col(params_t, "left")) * w / col(params_t, "width")
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    ty = torch.where(col(params_t, "vflip") > 0, h - ty, ty)
    tx = torch.where(col(params_t, "hflip") > 0, w - tx, tx)
    q = (ty / ch).floor().clamp(0, gh - 1) * gw + (tx / cw).floor().clamp(0, gw - 1)
    return torch.where(inside, q.long(), torch.full_like(q, -1, dtype=torch.long))


def vertex_affinity(h_s, h_t, f_s, f_t, alpha: float = 0.8, partners=None) -> torch.Tensor:
    """``partners``: ``(s -> t, t -> s)`` token correspondences of each image's two views, or ``None``."""
    glo = F.normalize(h_s.float(), dim=-1) @ F.normalize(h_t.float(), dim=-1).T
    st, ts = partners if partners is not None else (None, None)
    return alpha * glo + (1 - alpha) * (local_affinity(f_s, f_t, st) + local_affinity(f_t, f_s, ts).T)


def edge_affinity(z_s, z_t, edges_s, edges_t) -> torch.Tensor:
    d_s = F.normalize((z_s[edges_s[0]] - z_s[edges_s[1]]).float(), dim=-1)
    d_t = F.normalize((z_t[edges_t[0]] - z_t[edges_t[1]]).float(), dim=-1)
    return d_s @ d_t.T


def perm_matrix(perm: np.ndarray, device=None) -> torch.Tensor:
    v = torch.zeros(len(perm), len(perm), device=device)
    v[torch.arange(len(perm)), torch.as_tensor(perm, device=device)] = 1.0
    return v


def edge_activation(v: torch.Tensor, edges_s, edges_t) -> torch.Tensor:
    """``y[(i, j), (a, b)] = v[i, a] * v[j, b]``."""
    return v[edges_s[0]][:, edges_t[0]] * v[edges_s[1]][:, edges_t[1]]


class GraphMatchIMLE(torch.autograd.Function):
    """``v = GM(c_v + noise, c_e)``; backward: IMLE (see the module docstring)."""

    @staticmethod
    def forward(ctx, c_v, c_e, edges_s, edges_t, noise, lam: float, restarts: int = 8):
        es, et = edges_s.cpu().numpy(), edges_t.cpu().numpy()
        theta = (c_v + noise).detach()
        perm = solve_qap(theta.cpu().double().numpy(), c_e.detach().cpu().double().numpy(), es, et, restarts)
        v = perm_matrix(perm, c_v.device)
        ctx.save_for_backward(theta, c_e.detach(), v, edges_s, edges_t)
        ctx.lam, ctx.restarts = lam, restarts
        return v

    @staticmethod
    def backward(ctx, grad_v):
        theta, c_e, v, edges_s, edges_t = ctx.saved_tensors
        lam = ctx.lam
        target = (theta - lam * grad_v).cpu().double().numpy()
        es, et = edges_s.cpu().numpy(), edges_t.cpu().numpy()
        v_target = perm_matrix(solve_qap(target, c_e.cpu().double().numpy(), es, et, ctx.restarts), v.device)
        grad_cv = (v - v_target) / lam
        grad_ce = (edge_activation(v, edges_s, edges_t) - edge_activation(v_target, edges_s, edges_t)) / lam
        return grad_cv, grad_ce, None, None, None, None, None


def hamming_to_identity(v: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(v.shape[0], device=v.device)
    return (v * (1 - eye) + (1 - v) * eye).sum()


class GCN(nn.Module):
    """Two ``GCNConv`` layers (torch-geometric) with a ReLU between."""

    def __init__(self, dim: int = 128, hidden: int = 128):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1, self.conv2 = GCNConv(dim, hidden), GCNConv(hidden, hidden)

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x, edges)), edges)


class LVMMed(Method):
    """See the module docstring. Batches: ``view1`` / ``view2`` (``TwoViews``)."""

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        graph_size: int = 16,
        neighbours: int = 5,
        gcn_dim: int = 128,
        alpha: float = 0.8,
        lam: float = 80.0,
        noise_scale: float = 1.0,
        restarts: int = 8,
        local_match: str = "geometry",
        global_pool: str = "cls",
    ):
        super().__init__()
        if local_match not in ("geometry", "feature"):
            raise ValueError(f"local_match={local_match!r}; valid values: geometry, feature")
        if global_pool not in ("cls", "mean"):
            raise ValueError(f"global_pool={global_pool!r}; valid values: cls, mean")
        self.local_match, self.global_pool = local_match, global_pool
        if global_pool == "mean":
            self.rank_pooling = "mean"  # the collapse monitor reads what the projector sees (a CNN's: always the mean)
        if is_vit(backbone):
            self.encoder = MaskedViT(backbone)
        else:  # a CNN (the paper's ResNet-50): global average pool -> projector, final feature-map cells as tokens
            self.cnn = backbone
        self.projector = MLPHead(backbone.num_features, proj_hidden, proj_dim, nlayers=2, batch_norm=True)
        self.gcn = GCN(proj_dim, gcn_dim)
        self.graph_size, self.neighbours = int(graph_size), int(neighbours)
        self.alpha, self.lam, self.noise_scale = float(alpha), float(lam), float(noise_scale)
        self.restarts = int(restarts)
        if self.graph_size < 3:
            raise ValueError(f"graph_size={graph_size}: a graph needs at least 3 images")

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.vit if hasattr(self, "encoder") else self.cnn

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(z (B, proj_dim), local tokens (B, P, D), their grid (h, w))``: a ViT's class token (``global_pool=mean``:
        the mean of its patch tokens) and patch tokens, or a CNN's globally average-pooled feature map and its cells."""
        if hasattr(self, "encoder"):
            out = self.encoder(x)
            prefix = int(self.backbone.num_prefix_tokens)
            patches = out.tokens[:, prefix:]
            pooled = out.cls if self.global_pool == "cls" else patches.mean(dim=1)
            return self.projector(pooled), patches, tuple(out.grid)
        fmap = self.cnn.forward_features(x)  # (B, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)
        return self.projector(tokens.mean(dim=1)), tokens, (int(fmap.shape[-2]), int(fmap.shape[-1]))

    def graph_loss(
        self, z_s, z_t, f_s, f_t, generator: torch.Generator | None = None, partners=None
    ) -> tuple[torch.Tensor, float]:
        """Hamming loss / n of one graph and the fraction of correctly matched nodes."""
        e_s, e_t = knn_edges(z_s, self.neighbours), knn_edges(z_t, self.neighbours)
        h_s, h_t = self.gcn(z_s.float(), e_s), self.gcn(z_t.float(), e_t)
        c_v = vertex_affinity(h_s, h_t, f_s, f_t, self.alpha, partners)
        c_e = edge_affinity(z_s, z_t, e_s, e_t)
        u = torch.rand(c_v.shape, generator=generator, device="cpu").clamp_(1e-10, 1 - 1e-10).to(c_v.device)
        noise = -torch.log(-torch.log(u)) * self.noise_scale  # Gumbel(0, 1)
        v = GraphMatchIMLE.apply(c_v, c_e, e_s, e_t, noise, self.lam, self.restarts)
        n = v.shape[0]
        return hamming_to_identity(v) / n, float(torch.diagonal(v.detach()).mean())

    def forward(self, batch, ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        x1, x2 = batch["view1"], batch["view2"]
        z, f, grid = self.encode(torch.cat([x1, x2]))
        (z_s, z_t), (f_s, f_t) = z.chunk(2), f.chunk(2)
        b = z_s.shape[0]
        partners = self._partners(batch, x1, grid) if self.local_match == "geometry" else None
        starts = [s for s in range(0, b, self.graph_size) if b - s >= 3]
        losses, accs = [], []
        for s in starts:
            e = min(s + self.graph_size, b) if s != starts[-1] else b  # a short tail joins the last graph
            pair = None if partners is None else (partners[0][s:e], partners[1][s:e])
            loss, acc = self.graph_loss(z_s[s:e], z_t[s:e], f_s[s:e], f_t[s:e], partners=pair)
            losses.append(loss)
            accs.append(acc)
        if not losses:
            raise ValueError(f"batch of {b} images: LVM-Med needs at least 3 per graph")
        return {"loss": torch.stack(losses).mean(), "match_acc": torch.tensor(float(np.mean(accs)))}

    def _partners(self, batch, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token correspondences of each image's two views (``grid``: their token grid over ``x``'s pixels) from the
        views' crop parameters (``TwoViews`` records them)."""
        params = batch.get("crop_params")
        if not params or len(params) < 2:
            raise ValueError(
                "LVM-Med local_match=geometry needs the views' crop parameters (batch['crop_params'], as "
                "domainfm.data.transforms.TwoViews gives); use method.local_match=feature for other views"
            )
        size = (int(x.shape[-2]), int(x.shape[-1]))
        st = geometric_partners(params[0], params[1], size, grid).to(x.device)
        ts = geometric_partners(params[1], params[0], size, grid).to(x.device)
        return st, ts
