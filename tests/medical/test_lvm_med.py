"""LVM-Med's pieces against independent computations: the QAP solver against brute force (known optima and the
optimality gap), IMLE's gradient against its definition, the affinities against explicit loops, and the method
on real PneumoniaMNIST images (the loss falls)."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from domainfm.medical.graph_matching import brute_force_qap, edge_lookup, qap_score, solve_qap
from domainfm.medical.lvm_med import (
    GraphMatchIMLE,
    edge_activation,
    edge_affinity,
    geometric_partners,
    hamming_to_identity,
    knn_edges,
    local_affinity,
    vertex_affinity,
)

from tests.conftest import pretrain_in_process


def ring(n):
    """Directed ring edges i -> i+1 and i -> i-1."""
    src = np.repeat(np.arange(n), 2)
    dst = np.stack([(np.arange(n) + 1) % n, (np.arange(n) - 1) % n], 1).reshape(-1)
    return np.stack([src, dst])


def test_solver_finds_known_optima():
    n = 6
    perm = np.array([2, 0, 5, 1, 3, 4])
    c_v = np.full((n, n), -0.2)
    c_v[np.arange(n), perm] = 1.0  # vertex costs alone point at perm
    edges = ring(n)
    assert np.array_equal(solve_qap(c_v, np.zeros((12, 12)), edges, edges), perm)
    # the edge term overrides a weak vertex preference: rings map onto rings (any rotation is consistent)
    c_v = np.eye(n) * 0.1 + np.roll(np.eye(n), 2, axis=1) * 0.2  # rotation by 2 slightly preferred
    c_e = np.ones((12, 12))
    best, score = brute_force_qap(c_v, c_e, edges, edges)
    found = solve_qap(c_v, c_e, edges, edges)
    assert np.array_equal(found, (np.arange(n) + 2) % n) and np.array_equal(found, best)
    assert qap_score(found, c_v, c_e, edges, edge_lookup(edges, n)) == pytest.approx(score)


def test_solver_optimality_gap_against_brute_force():
    """100 random instances, n = 4..7, 3-NN graphs, uniform(-1, 1) affinities (harder than training's, where the
    identity dominates), with the method's 8 restarts: a permutation every time; optimal on at least 90 % of them,
    mean relative gap below 0.5 % (measured on these instances: 92 %, 0.26 %)."""
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    gaps = []
    for n in range(4, 8):
        for _ in range(25):
            e_s = knn_edges(torch.randn(n, 8, generator=gen), 3).numpy()
            e_t = knn_edges(torch.randn(n, 8, generator=gen), 3).numpy()
            c_v, c_e = rng.uniform(-1, 1, (n, n)), rng.uniform(-1, 1, (e_s.shape[1], e_t.shape[1]))
            perm = solve_qap(c_v, c_e, e_s, e_t, restarts=8)
            assert sorted(perm.tolist()) == list(range(n))
            _, best = brute_force_qap(c_v, c_e, e_s, e_t)
            gaps.append((best - qap_score(perm, c_v, c_e, e_s, edge_lookup(e_t, n))) / abs(best))
    gaps = np.asarray(gaps)
    assert (gaps >= -1e-9).all() and (gaps < 1e-9).mean() >= 0.9 and gaps.mean() < 0.005


def test_imle_gradient_is_its_definition():
    """dL/dc_v = (v - v') / lambda with v = GM(c_v + eps), v' = GM(c_v + eps - lambda dL/dv): here n = 5, where the
    solver is exact (checked by brute force), L = Hamming(v, I) / n, so dL/dv = (1 - 2 I) / n."""
    torch.manual_seed(0)
    n, lam = 5, 80.0
    edges = torch.as_tensor(ring(n))
    c_v = torch.randn(n, n, requires_grad=True)
    c_e = torch.randn(edges.shape[1], edges.shape[1], requires_grad=True)
    noise = torch.randn(n, n)
    v = GraphMatchIMLE.apply(c_v, c_e, edges, edges, noise, lam)
    (hamming_to_identity(v) / n).backward()
    e = edges.numpy()
    theta = (c_v + noise).detach().double().numpy()
    v_ref, _ = brute_force_qap(theta, c_e.detach().double().numpy(), e, e)
    dl_dv = (1 - 2 * np.eye(n)) / n
    v_tgt, _ = brute_force_qap(theta - lam * dl_dv, c_e.detach().double().numpy(), e, e)
    one_hot = lambda p: np.eye(n)[p]  # noqa: E731
    assert np.array_equal(v.detach().numpy(), one_hot(v_ref))
    np.testing.assert_allclose(c_v.grad.numpy(), (one_hot(v_ref) - one_hot(v_tgt)) / lam, atol=1e-7)
    y = lambda m: np.array([[m[i, a] * m[j, b] for a, b in e.T] for i, j in e.T])  # noqa: E731
    np.testing.assert_allclose(c_e.grad.numpy(), (y(one_hot(v_ref)) - y(one_hot(v_tgt))) / lam, atol=1e-7)
    assert np.array_equal(one_hot(v_tgt), np.eye(n))  # lambda = 80 pulls the target to the identity


def test_affinities_and_edges_against_loops():
    torch.manual_seed(1)
    n, p, d = 4, 3, 6
    z_s, z_t = torch.randn(n, d), torch.randn(n, d)
    h_s, h_t = torch.randn(n, d), torch.randn(n, d)
    f_s, f_t = torch.randn(n, p, d), torch.randn(n, p, d)
    cos = lambda a, b: float(F.cosine_similarity(a, b, dim=0))  # noqa: E731
    lo = np.array([[np.mean([max(cos(f_s[i, q], f_t[a, r]) for r in range(p)) for q in range(p)]) for a in range(n)]
                   for i in range(n)])  # fmt: skip
    np.testing.assert_allclose(local_affinity(f_s, f_t).numpy(), lo, atol=1e-6)
    lo_ts = np.array([[np.mean([max(cos(f_t[a, r], f_s[i, q]) for q in range(p)) for r in range(p)])
                       for i in range(n)] for a in range(n)])  # fmt: skip
    glo = np.array([[cos(h_s[i], h_t[a]) for a in range(n)] for i in range(n)])
    np.testing.assert_allclose(vertex_affinity(h_s, h_t, f_s, f_t, 0.8).numpy(), 0.8 * glo + 0.2 * (lo + lo_ts.T),
                               atol=1e-6)  # fmt: skip
    e_s, e_t = knn_edges(z_s, 2), knn_edges(z_t, 2)
    for i in range(n):  # each node points at its 2 most similar other nodes
        sims = [(cos(z_s[i], z_s[j]), j) for j in range(n) if j != i]
        assert set(e_s[1][e_s[0] == i].tolist()) == {j for _, j in sorted(sims)[-2:]}
    ce = np.array([[cos(z_s[i] - z_s[j], z_t[a] - z_t[b]) for a, b in e_t.T.tolist()] for i, j in e_s.T.tolist()])
    np.testing.assert_allclose(edge_affinity(z_s, z_t, e_s, e_t).numpy(), ce, atol=1e-6)
    v = torch.eye(n)[torch.randperm(n)]
    y = edge_activation(v, e_s, e_t)
    for (r, (i, j)), (c, (a, b)) in itertools.product(enumerate(e_s.T.tolist()), enumerate(e_t.T.tolist())):
        assert y[r, c] == v[i, a] * v[j, b]


def test_lvm_med_tiny_learns_to_match_views_on_pneumoniamnist(shared_data, tmp_path):
    npz = shared_data / "medical" / "pneumoniamnist.npz"
    run = tmp_path / "lvm"
    out = pretrain_in_process([
        "recipe=medical/lvm_med_tiny", f"data.root={npz}", "data.dataset._target_=domainfm.data.arrays.NpzImages",
        f"run_dir={run}", "trainer.max_steps=100", "data.batch_size=32", "+backbone.depth=1", "method.proj_hidden=128",
        "data.num_workers=0", "trainer.progress=false", "trainer.tensorboard=false", "trainer.log_every=10",
        "trainer.checkpoint_every=1000",
    ])  # fmt: skip
    assert out["steps"] == 100
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05


def test_geometric_partners_by_hand():
    """A 64 x 64 image; view s = the whole image at half size, view t = its bottom-right quadrant, mirrored;
    32 px views, 8 px tokens (4 x 4)."""
    s = {"top": [0], "left": [0], "height": [64], "width": [64], "hflip": [False], "vflip": [False]}
    t = {"top": [32], "left": [32], "height": [32], "width": [32], "hflip": [True], "vflip": [False]}
    q = geometric_partners(s, t, (32, 32), (4, 4))[0].reshape(4, 4)
    # s token (2, 2): centre (20, 20) -> image (40, 40) -> t (8, 8) -> mirrored x 24: t token (1, 3) = 7
    assert q[2, 2] == 7
    assert q[3, 3] == 13  # (28, 28) -> (56, 56) -> t (24, 24) -> mirrored x 8: t token (3, 1)
    assert q[0, 0] == -1  # (4, 4) -> (8, 8): outside t's quadrant
    expected = torch.full((4, 4), -1)
    for r, c in itertools.product(range(2, 4), range(2, 4)):  # only the bottom-right quadrant is in t
        ty, tx = (8 * r + 4) * 2 - 32, (8 * c + 4) * 2 - 32
        expected[r, c] = (ty // 8) * 4 + (32 - tx) // 8
    assert torch.equal(q, expected)


def test_geometric_partners_follow_real_crops_of_a_coordinate_image():
    """Independent of the formula: views cut by the real ``random_crop`` (resized crop + flips, torchvision) from
    an image whose two channels are its own y and x coordinates; each token centre's value says where it came
    from, and the t-token covering that point must be the partner."""
    from domainfm.data.transforms import random_crop

    torch.manual_seed(0)
    h, w = 60, 80
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    image = torch.stack([yy, xx]) + 0.5  # pixel centres
    agree = total = 0
    for _ in range(20):
        (vs, ps), (vt, pt) = (random_crop(image, (32, 32), (0.3, 1.0), hflip=0.5, vflip=0.5) for _ in range(2))
        batched = [{k: [v] for k, v in p.items() if k != "size"} for p in (ps, pt)]
        q = geometric_partners(batched[0], batched[1], (32, 32), (4, 4))[0]
        for token in range(16):
            r, c = divmod(token, 4)
            point = vs[:, 8 * r + 3 : 8 * r + 5, 8 * c + 3 : 8 * c + 5].mean(dim=(1, 2))  # centre value
            dist = (vt - point[:, None, None]).abs().amax(0)
            scale = max(pt["height"] / 32, pt["width"] / 32)
            if dist.min() > scale:  # the point is not in view t
                continue
            ty, tx = divmod(int(dist.argmin()), 32)
            total += 1
            agree += int(q[token]) == (ty // 8) * 4 + tx // 8
    assert total > 100 and agree / total > 0.9  # cell borders: the nearest pixel may sit in the next cell


def test_local_affinity_uses_the_geometric_partner_for_the_same_image():
    f_s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -1.0]]])  # (2 images, 2 tokens, 2)
    f_t = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    partners = torch.tensor([[0, -1], [1, 0]])  # image 0: token 0 -> t token 0, token 1 outside t
    got = local_affinity(f_s, f_t, partners)
    nearest = local_affinity(f_s, f_t)
    cos = F.cosine_similarity
    # image 0: token 0 with t token 0 (cos 0), token 1 by nearest feature (1.0)
    assert got[0, 0] == pytest.approx((cos(f_s[0, 0], f_t[0, 0], dim=0) + 1.0) / 2)
    # image 1: token 0 -> t token 1, token 1 -> t token 0
    expected = (cos(f_s[1, 0], f_t[1, 1], dim=0) + cos(f_s[1, 1], f_t[1, 0], dim=0)) / 2
    assert got[1, 1] == pytest.approx(float(expected))
    off = ~torch.eye(2, dtype=torch.bool)
    assert torch.equal(got[off], nearest[off])  # different images: nearest feature, unchanged
    assert torch.all(torch.diagonal(got) <= torch.diagonal(nearest) + 1e-6)  # a partner is never better than the best


def test_lvm_med_with_a_resnet_pretrains_exports_and_gives_pooled_features(shared_data, tmp_path):
    """The paper's ResNet option (timm): GAP -> projector, the final map's cells as local features (geometry-matched);
    the export is a plain timm ResNet whose mean-pooled map is the core's feature for probes."""
    from domainfm.backbones.loading import load_backbone
    from domainfm.backbones.tokens import forward_tokens
    from domainfm.cli import compose_config
    from domainfm.evaluation.features import pool_tokens
    from omegaconf import OmegaConf

    npz = shared_data / "medical" / "pneumoniamnist.npz"
    run = tmp_path / "resnet"
    out = pretrain_in_process([
        "recipe=medical/lvm_med_resnet_tiny", f"data.root={npz}",
        "data.dataset._target_=domainfm.data.arrays.NpzImages", f"run_dir={run}", "trainer.max_steps=4",
        "data.batch_size=16", "method.proj_hidden=64", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.log_every=1", "trainer.rank_every=2",
        "trainer.rank_samples=16",
    ])  # fmt: skip
    assert out["steps"] == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r) and any("rankme" in r for r in rows)
    model = load_backbone(str(run / "export")).eval()
    assert type(model).__name__ == "ResNet"
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        tokens, prefix = forward_tokens(model, x)
        fmap = model.forward_features(x)
    assert prefix == 0 and tokens.shape == (3, 4, model.num_features)  # 64 px / stride 32: 2 x 2 cells
    torch.testing.assert_close(pool_tokens(tokens, prefix, "mean"), fmap.mean(dim=(2, 3)))  # = global average pool
    # the ResNet-50 recipe is medical/lvm_med with only the backbone changed
    vit, cnn = (
        OmegaConf.to_container(compose_config("pretrain", [f"recipe=medical/{r}", "data.root=x"]), resolve=False)
        for r in ("lvm_med", "lvm_med_resnet50")
    )
    for cfg in (vit, cnn):
        for key in ("backbone", "name", "description"):
            cfg.pop(key)
        cfg["method"].pop("backbone")
    assert vit == cnn


def test_geometry_matching_without_crop_parameters_says_what_to_do():
    from domainfm.backbones.vit import create_vit
    from domainfm.medical.lvm_med import LVMMed

    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=1, depth=1)
    x = torch.randn(6, 1, 32, 32)
    with pytest.raises(ValueError, match="needs the views' crop parameters .* use method.local_match=feature"):
        LVMMed(vit, proj_hidden=32)({"view1": x, "view2": x})
    assert torch.isfinite(LVMMed(vit, proj_hidden=32, local_match="feature")({"view1": x, "view2": x})["loss"])
    with pytest.raises(ValueError, match="local_match='nearest'; valid values: geometry, feature"):
        LVMMed(vit, local_match="nearest")


def test_global_pool_mean_projects_the_mean_patch_token():
    from domainfm.backbones.vit import create_vit
    from domainfm.medical.lvm_med import LVMMed

    torch.manual_seed(0)
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=1, depth=1)
    method = LVMMed(vit, proj_hidden=32, local_match="feature", global_pool="mean").eval()
    x = torch.randn(6, 1, 32, 32)
    z, tokens, grid = method.encode(x)
    feats = vit.forward_features(x)
    assert grid == (4, 4) and torch.allclose(tokens, feats[:, 1:], atol=1e-6)
    assert torch.allclose(z, method.projector(feats[:, 1:].mean(1)), atol=1e-6)
    assert torch.allclose(method.embed(x), feats[:, 1:].mean(1), atol=1e-6)  # the collapse monitor reads it too
    assert torch.isfinite(method.train()({"view1": x, "view2": x})["loss"])
    with pytest.raises(ValueError, match="global_pool='max'; valid values: cls, mean"):
        LVMMed(vit, global_pool="max")
