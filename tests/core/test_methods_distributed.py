"""Methods and losses under 2 gloo processes (CPU) against the official codes' multi-process semantics: what each
process computes from its half of the batch, compared with one process on the whole batch where the official code
makes them equal, and with the official formula where it does not (DINOv2's iBOT centre).

One spawn runs every case (``ranks`` fixture); the losses that test_objectives_distributed.py already covers (CLIP,
SigLIP, NT-Xent) are not repeated.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from domainfm.backbones.vit import create_vit
from domainfm.methods.base import StepContext
from domainfm.methods.dinov2 import DINOv2
from domainfm.objectives.contrastive import moco_v3_loss
from domainfm.objectives.dino import sinkhorn_knopp

from tests.conftest import free_port
from tests.core import reference_math as ref

WORLD, B, N = 2, 4, 16  # processes, global batch, patches per crop (32 px, patch 8)
CTX = StepContext(0, 10)
TERMS = ("dino_global", "dino_local", "ibot")
# masked patches per (sample, global view); samples 0-1 are rank 0's, 2-3 rank 1's
MASK_COUNTS = {
    "equal": [(3, 2), (1, 4), (5, 0), (2, 3)],  # 10 and 10 masked patches per process
    "unequal": [(6, 5), (4, 7), (1, 0), (2, 1)],  # 22 and 4
}
IBOT_ROWS = [slice(0, 7), slice(7, 10)]  # iBOT Sinkhorn-Knopp: unequal numbers of masked patches per process


def _vit():
    torch.manual_seed(0)
    return create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, depth=1)


def _dinov2(centering):
    return DINOv2(_vit(), out_dim=32, hidden_dim=16, bottleneck_dim=8, centering=centering, koleo_weight=0.0)


def _dino_batch(kind):
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(B, 2, N, dtype=torch.bool)
    for b, counts in enumerate(MASK_COUNTS[kind]):
        for v, n in enumerate(counts):
            masks[b, v, torch.randperm(N, generator=g)[:n]] = True
    return {
        "global_crops": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)],
        "masks": masks,
    }


def _local(batch, rank):
    rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    return {
        "global_crops": [x[rows] for x in batch["global_crops"]],
        "local_crops": [x[rows] for x in batch["local_crops"]],
        "masks": batch["masks"][rows],
    }


def _moco_data():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4)]  # q1, q2, k1, k2


def _sk_logits():
    g = torch.Generator().manual_seed(3)
    return 0.05 * torch.randn(10, 8, generator=g) + 0.02 * torch.arange(8)


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for centering, kind in (("centering", "equal"), ("centering", "unequal"), ("sinkhorn_knopp", "unequal")):
        method = _dinov2(centering)
        out = method(_local(_dino_batch(kind), rank), CTX)
        results[f"{centering}_{kind}"] = {
            "dino_center": method.dino_loss.center.clone(),
            "ibot_center": method.ibot_loss.center.clone(),
            **{k: out[k].detach() for k in TERMS},
        }
    q1, q2, k1, k2 = _moco_data()
    rows = slice(rank * 3, (rank + 1) * 3)
    a, b = q1[rows].clone().requires_grad_(True), q2[rows].clone().requires_grad_(True)
    loss = moco_v3_loss(a, b, k1[rows], k2[rows], 0.2)
    loss.backward()
    results["moco"] = {"loss": loss.detach(), "grad_q1": a.grad, "grad_q2": b.grad}
    logits = _sk_logits()
    results["sk_dino"] = sinkhorn_knopp(logits[rank * 5 : (rank + 1) * 5], 0.07)
    mine = logits[IBOT_ROWS[rank]]
    results["sk_ibot"] = sinkhorn_knopp(mine, 0.07, num_samples=mine.shape[0])
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods_distributed")
    mp.spawn(_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single(centering, kind):
    method = _dinov2(centering)
    out = method(_dino_batch(kind), CTX)
    return method, out


@torch.no_grad()
def _teacher_logits(method, batch):
    """A process's teacher outputs (the method's teacher, the references' forward): the DINO head on the swapped cls
    tokens of both global crops, and on the masked patch tokens (shared head)."""
    g = torch.cat(batch["global_crops"])
    masks = torch.cat([batch["masks"][:, 0], batch["masks"][:, 1]])
    tokens = ref.vit_tokens(method.teacher.encoder.vit, g)
    n = tokens.shape[0] // 2
    cls = torch.cat([tokens[n:, 0], tokens[:n, 0]])
    return method.teacher.head(cls), method.teacher.head(tokens[:, 1:][masks])


@pytest.mark.parametrize("kind", ["equal", "unequal"])
def test_dino_center_two_ranks_equals_single_process(ranks, kind):
    # dino_clstoken_loss.py: all-reduced sum of the teacher cls logits / (len * world) -> the global batch mean
    results = [r[f"centering_{kind}"] for r in ranks]
    single, _ = _single("centering", kind)
    per_rank = [_teacher_logits(single, _local(_dino_batch(kind), r))[0] for r in range(WORLD)]
    official = ref.dino_center_update(torch.zeros(1, 32), per_rank).float()
    for res in results:
        torch.testing.assert_close(res["dino_center"], single.dino_loss.center, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res["dino_center"], official, rtol=1e-5, atol=1e-7)


def test_ibot_center_two_ranks_with_equal_masked_counts_equals_single_process(ranks):
    # equal numbers of masked patches per process: DINOv2's mean of per-process means is the global mean
    single, _ = _single("centering", "equal")
    per_rank = [_teacher_logits(single, _local(_dino_batch("equal"), r))[1] for r in range(WORLD)]
    official = ref.ibot_center_update(torch.zeros(1, 32), per_rank).float()
    torch.testing.assert_close(single.ibot_loss.center, official, rtol=1e-5, atol=1e-7)
    for res in ranks:
        torch.testing.assert_close(res["centering_equal"]["ibot_center"], official, rtol=1e-5, atol=1e-7)


def test_ibot_center_two_ranks_with_unequal_masked_counts_follows_dinov2(ranks):
    # ssl_meta_arch.py calls update_center on the (1, M_r, K) tensor: len() = 1, so the centre update is the mean over
    # processes of each process's mean masked-patch logit, not the mean over all masked patches (22 vs 4 patches here)
    single, _ = _single("centering", "unequal")
    per_rank = [_teacher_logits(single, _local(_dino_batch("unequal"), r))[1] for r in range(WORLD)]
    assert [t.shape[0] for t in per_rank] == [22, 4]
    official = ref.ibot_center_update(torch.zeros(1, 32), per_rank).float()
    global_mean = 0.1 * torch.cat(per_rank).mean(0, keepdim=True)
    torch.testing.assert_close(single.ibot_loss.center, global_mean, rtol=1e-5, atol=1e-7)  # one process: the same
    assert (official - global_mean).abs().max() > 1e-4  # the two readings differ on this batch
    for res in ranks:
        torch.testing.assert_close(res["centering_unequal"]["ibot_center"], official, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["centering_equal", "centering_unequal", "sinkhorn_knopp_unequal"])
def test_dinov2_loss_terms_two_ranks_average_to_single_process(ranks, case):
    # DDP averages the gradients of the per-process losses: their mean must be the single-process loss (each process
    # divides by its own 2B; Sinkhorn-Knopp normalises prototypes over all processes, samples locally)
    centering, kind = case.rsplit("_", 1)
    _, out = _single(centering, kind)
    for term in TERMS:
        mean = sum(r[case][term] for r in ranks) / WORLD
        torch.testing.assert_close(mean, out[term].detach(), rtol=1e-5, atol=1e-6, msg=term)


def test_mocov3_loss_two_ranks_equals_single_process(ranks):
    # builder.py::contrastive_loss: keys concat_all_gather'ed, labels arange(N) + N * rank, CE * 2T on each process
    q1, q2, k1, k2 = _moco_data()
    for r, res in enumerate(ranks):
        rows = slice(r * 3, (r + 1) * 3)
        expected = ref.moco_contrastive_loss(q1[rows], k2, 0.2, rank=r) + ref.moco_contrastive_loss(
            q2[rows], k1, 0.2, rank=r
        )
        torch.testing.assert_close(res["moco"]["loss"], expected, rtol=1e-12, atol=0)
    a, b = q1.clone().requires_grad_(True), q2.clone().requires_grad_(True)
    single = moco_v3_loss(a, b, k1, k2, 0.2)
    single.backward()
    torch.testing.assert_close(
        single.detach(), ref.moco_contrastive_loss(q1, k2, 0.2) + ref.moco_contrastive_loss(q2, k1, 0.2)
    )
    torch.testing.assert_close(sum(r["moco"]["loss"] for r in ranks) / WORLD, single.detach(), rtol=1e-12, atol=0)
    # each process's gradient of its own loss, averaged by DDP: world * dL/d(own rows) of the single-process loss
    for key, grad in (("grad_q1", a.grad), ("grad_q2", b.grad)):
        torch.testing.assert_close(torch.cat([r["moco"][key] for r in ranks]) / WORLD, grad, rtol=1e-10, atol=1e-14)


def test_sinkhorn_knopp_two_ranks_equals_single_process(ranks):
    logits = _sk_logits()
    both = torch.cat([r["sk_dino"] for r in ranks])
    torch.testing.assert_close(both, sinkhorn_knopp(logits, 0.07), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(both.double(), ref.sinkhorn_knopp_teacher(logits, 0.07), rtol=0, atol=1e-6)
    # iBOT: B = the all-reduced number of masked patches, here 7 + 3
    both = torch.cat([r["sk_ibot"] for r in ranks])
    torch.testing.assert_close(both, sinkhorn_knopp(logits, 0.07, num_samples=10), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        both.double(), ref.sinkhorn_knopp_teacher(logits, 0.07, num_samples=10), rtol=0, atol=1e-6
    )
