"""Many processes under torchrun: the process group, FSDP2 sharding, and the collectives the loop uses.

``srft train`` run by ``torchrun --nproc_per_node N -m srft train ...`` finds ``WORLD_SIZE``
> 1 in its environment and trains data-parallel with sharded weights:

- the policy is wrapped with FSDP2 (``fully_shard`` on every decoder layer, then the root):
  float32 master weights and optimiser state, sharded; forward passes in ``model.dtype``
  (``MixedPrecisionPolicy``), gradients reduced in float32 and *summed* across ranks, since
  each rank's loss is already its share of the step's global objective;
- each rank takes a contiguous share of the step's prompts (whole groups: advantages never
  need another rank's rewards); loss denominators are reduced across ranks first;
- every rank runs the same number of forward/backward passes (FSDP's collectives pair up
  pass by pass), padding with empty micro-batches where its share is smaller;
- each rank has its own rollout engine with full weights, refreshed after every update
  from the gathered shards (``full_tensor()``, a collective every rank joins);
- the step's record is built from the gathered batch, so every rank holds the same record
  and the same method state; only rank 0 writes files.

One process (``WORLD_SIZE`` unset or 1) uses none of this: ``SINGLE`` makes every
collective a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """Who this process is among the ranks; the collectives are no-ops for a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (its length a multiple of the world size)."""
        if len(items) % self.world:
            raise ValueError(f"{len(items)} items do not split evenly over {self.world} ranks")
        per = len(items) // self.world
        return items[self.rank * per:(self.rank + 1) * per]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (float64, so that sums do not depend on the rank count)."""
        if not self.enabled or not values:
            return dict(values)
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist()))

    def max(self, value: int) -> int:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    @property
    def device(self) -> torch.device:
        # gloo reduces CPU tensors; NCCL needs them on this rank's GPU
        import torch.distributed as dist

        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE = Dist()


def init_from_env(device: str = "auto", timeout_minutes: float = 120) -> Dist:
    """Join the process group torchrun describes in the environment; ``SINGLE`` without one.

    ``timeout_minutes`` (``model.dist_timeout_minutes``): how long a collective may wait for the
    other ranks before the group aborts. NCCL's default is 10 minutes, gloo's 30: less than one
    rank may spend alone on a long evaluation or a checkpoint write while the others wait."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import datetime

    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Dist(rank=rank, world=world, local_rank=local_rank)


def shutdown(d: Dist, wait: bool = True) -> None:
    """Leave the process group; ``wait``: together (a rank that tore its group down while another
    still finished its last writes was seen to abort, with gloo). After an error, without waiting:
    the other ranks may never arrive."""
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                if wait:
                    dist.barrier()
            finally:
                dist.destroy_process_group()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules of the classes its ``_no_split_modules`` names
    (Hugging Face models list their decoder layer there)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    inner = getattr(model, "get_base_model", None)  # PEFT
    if callable(inner):
        names |= set(getattr(inner(), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype, d: Dist, group_size: int = 0) -> torch.nn.Module:
    """FSDP2: shard every decoder layer, then the root (embeddings, final norm, a tied head).

    ``group_size`` N > 0 (and < the world): hybrid sharding over a 2-D mesh, (world / N
    replicas) x (N shards), ranks r and r + N holding the same shard; 0: one shard group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = None
    if group_size and group_size != d.world:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(d.device.type, (d.world // group_size, group_size),
                                mesh_dim_names=("replicate", "shard"))
    if compute_dtype == torch.float32:
        mp = root_mp = MixedPrecisionPolicy()
    else:
        # Only the root's output (the logits) is cast to float32 for the loss: a layer's float32 output
        # would reach the final norm and the head in float32 against their bfloat16 weights (the
        # first forward failed so: "expected m1 and m2 to have the same dtype").
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        root_mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32,
                                       output_dtype=torch.float32)
    master_weights_fp32(model)
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"cannot shard {type(model).__name__}: it names no decoder layer class in "
                         f"_no_split_modules")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    # Each rank's loss is its share of the global objective (global denominators): the step's
    # gradient is the sum over ranks, not FSDP's default mean.
    for m in [*layers, model]:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def master_weights_fp32(model: torch.nn.Module) -> None:
    """Trainable parameters in float32 (the master weights the optimiser updates); frozen ones (the
    base under LoRA) stay in the dtype they were loaded in, the compute dtype: a float32 copy of a
    frozen 7B base would double its memory for nothing. FSDP2 casts each to ``param_dtype`` to
    all-gather, so the mixed dtypes meet as one."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.state_dict()`` whole on every rank (a collective for FSDP2 shards)."""
    out = {}
    for name, t in model.state_dict().items():
        full = getattr(t, "full_tensor", None)
        out[name] = (full() if callable(full) else t).detach()
    return out


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    loc = getattr(t, "to_local", None)
    return loc() if callable(loc) else t
