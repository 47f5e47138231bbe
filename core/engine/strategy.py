"""How the method is replicated over processes: single process, DDP, or FSDP2 (``fully_shard``)."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from domainfm.errors import ConfigError
from torch import nn


class Strategy:
    """Single process. Subclasses wrap or shard the model and translate state dicts."""

    name = "single"

    def __init__(self, method: nn.Module, device: torch.device):
        self.method = method
        self.device = device
        self.model: nn.Module = method

    @staticmethod
    def create(name: str, method: nn.Module, device: torch.device, world: int) -> Strategy:
        if name not in ("auto", "ddp", "fsdp", "single"):
            raise ConfigError(f"trainer.strategy={name} is not one of auto, single, ddp, fsdp")
        if world == 1 or name == "single":
            return Strategy(method, device)
        sync_batchnorm(method, device)
        if name == "fsdp":
            return FSDPStrategy(method, device)
        return DDPStrategy(method, device)

    def maybe_no_sync(self, sync: bool):
        return contextlib.nullcontext()

    def gathered(self):
        """Context in which submodules of the method may be called outside its ``forward`` (e.g. the backbone)."""
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.method.state_dict().items()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def full_module(self, method: nn.Module) -> nn.Module:
        """A CPU copy of the method with full weights (for export)."""
        return copy.deepcopy(method).cpu()


def sync_batchnorm(method: nn.Module, device: torch.device) -> int:
    """Replace the method's BatchNorm layers (SimCLR / MoCo v3 heads) by ``SyncBatchNorm`` in place, as the reference
    codes do under DDP, so batch statistics span every process; returns how many. Only on GPUs: SyncBatchNorm has no
    CPU kernel, so multi-process CPU runs (gloo) keep per-process statistics."""
    if device.type != "cuda":
        return 0
    count = 0
    for parent in list(method.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, child_name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                count += 1
    return count


class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, method: nn.Module, device: torch.device):
        super().__init__(method, device)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        self.model = DistributedDataParallel(method, device_ids=ids, broadcast_buffers=False)

    def maybe_no_sync(self, sync: bool):
        return contextlib.nullcontext() if sync else self.model.no_sync()


class FSDPStrategy(Strategy):
    """FSDP2: each transformer block of the backbone is its own shard unit, then the whole method."""

    name = "fsdp"

    def __init__(self, method: nn.Module, device: torch.device):
        super().__init__(method, device)
        from torch.distributed.fsdp import fully_shard

        self._template = copy.deepcopy(method).cpu()
        blocks = getattr(getattr(method, "backbone", None), "blocks", None)
        for block in blocks or []:
            fully_shard(block)
        fully_shard(method)
        self.model = method

    @contextlib.contextmanager
    def gathered(self):
        """The root's parameters (patch embedding, norms, heads) are all-gathered for the duration; the blocks
        gather themselves in their own forward hooks. Every process must enter it."""
        self.method.unshard()
        try:
            yield
        finally:
            self.method.reshard()

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def model_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.method, options=self._options(cpu_offload=True))

    def load_model_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.method, state, options=self._options(broadcast_from_rank0=True))

    def optimizer_state(self, optimizer):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.method, optimizer, options=self._options(cpu_offload=True))

    def load_optimizer_state(self, optimizer, state) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.method, optimizer, state, options=self._options(broadcast_from_rank0=True))

    def full_module(self, method: nn.Module) -> nn.Module:
        full = copy.deepcopy(self._template)
        state = self.model_state()
        if state:  # rank 0 holds the gathered weights
            full.load_state_dict(state)
        return full
