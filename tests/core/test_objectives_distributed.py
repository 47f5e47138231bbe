"""Losses that gather across processes: a 2-process gloo run equals one process on the concatenated batch
(loss value, and gradients w.r.t. each process's own features)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from domainfm.objectives.clip import clip_loss, siglip_loss
from domainfm.objectives.contrastive import nt_xent_loss

from tests.conftest import free_port

B, D = 6, 5


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def _losses(a, b):
    return {
        "clip": clip_loss(a, b, torch.tensor(2.5)),
        "siglip": siglip_loss(a, b, torch.tensor(1.5), torch.tensor(-1.0)),
        "ntxent": nt_xent_loss(a, b, 0.3),
    }


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    a_all, b_all = _data()
    rows = slice(rank * B // world, (rank + 1) * B // world)
    results = {}
    for name in ("clip", "siglip", "ntxent"):
        a = a_all[rows].clone().requires_grad_(True)
        b = b_all[rows].clone().requires_grad_(True)
        loss = _losses(a, b)[name]
        loss.backward()
        results[name] = (loss.detach(), a.grad, b.grad)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_gathered_losses_equal_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    a_all, b_all = _data()
    for name in ("clip", "siglip", "ntxent"):
        a = a_all.clone().requires_grad_(True)
        b = b_all.clone().requires_grad_(True)
        single = _losses(a, b)[name]
        single.backward()
        mean_loss = sum(r[name][0] for r in ranks) / world
        torch.testing.assert_close(mean_loss, single.detach(), rtol=1e-5, atol=1e-6, msg=name)
        # each rank's gradient is d(sum of rank losses)/d(own rows) = world * dL/d(own rows)
        grad_a = torch.cat([r[name][1] for r in ranks]) / world
        grad_b = torch.cat([r[name][2] for r in ranks]) / world
        torch.testing.assert_close(grad_a, a.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grad_b, b.grad, rtol=1e-4, atol=1e-6, msg=name)
