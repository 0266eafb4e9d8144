"""The thin helper that owns device, precision, distribution and threads (Lightning-Fabric style).

The training loop in :mod:`convlens.train.loop` stays readable because everything that depends on
*where* it runs lives here:

- device: `auto` picks CUDA when available; under `torchrun` each process takes `cuda:LOCAL_RANK`.
- distribution: when `WORLD_SIZE > 1` (set by `torchrun`) the process group is initialised (nccl on
  GPU, gloo on CPU), the model is wrapped in DistributedDataParallel, metrics are summed over ranks
  and only rank 0 writes files or prints.
- precision: bf16 autocast on CUDA when asked (`amp`); CPU runs stay in float32 and deterministic.
- threads: on CPU, one intra-op thread per physical core (shared between local ranks), unless the user
  set `OMP_NUM_THREADS`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from convlens.errors import ConvlensError


def physical_cores() -> int:
    """Cores this process may use, counting SMT siblings once."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        logical = os.cpu_count() or 1
    try:
        with open("/sys/devices/system/cpu/smt/active") as f:
            smt = f.read().strip() == "1"
    except OSError:
        smt = False
    return max(1, logical // 2 if smt else logical)


@contextlib.contextmanager
def fast_cuda_kernels() -> Iterator[None]:
    """cuDNN benchmark and TF32 on for the block (training: input shapes are fixed within a run,
    so cuDNN picks the fastest kernels once), then each switch as it was: they are global, and a
    later inspection in the same process expects full float32."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32)
    cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = True, True, True
    try:
        yield
    finally:
        cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = saved


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Runtime:
    """Where and how this process trains. Create with :meth:`Runtime.setup`, end with :meth:`close`."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: bool = False  # bf16 autocast active (CUDA only)
    channels_last: bool = False
    distributed: bool = False  # this object initialised the process group (and must destroy it)
    previous_threads: int | None = None  # restored by close(): threads are process-wide state
    # The cuDNN / TF32 switches set for training, restored by close(): also process-wide state.
    backends: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def setup(
        cls,
        device: str = "auto",
        *,
        amp: bool = False,
        channels_last: bool = False,
        threads: int | None = None,
    ) -> Runtime:
        """Resolve the device, join the process group under torchrun, set threads and backends."""
        world_size = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", world_size)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConvlensError(
                "--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu"
            )
        if device == "cuda":
            # One GPU per process under torchrun; `cuda` alone means the first GPU.
            dev = torch.device("cuda", local_rank if world_size > 1 else 0)
        else:
            dev = torch.device(device)

        previous_threads = None
        backends = contextlib.ExitStack()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            backends.enter_context(fast_cuda_kernels())  # undone by close()
        else:
            previous_threads = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            elif "OMP_NUM_THREADS" not in os.environ:
                # Several ranks on one machine share its cores; more threads than cores only thrash.
                torch.set_num_threads(max(1, physical_cores() // max(1, local_world)))
            amp = False  # bf16 autocast on CPU changes results and is rarely faster for small CNNs

        distributed = False
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            if not dist.is_available():
                raise ConvlensError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
            distributed = True
        return cls(
            device=dev,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            amp=amp and dev.type == "cuda",
            channels_last=channels_last,
            distributed=distributed,
            previous_threads=previous_threads,
            backends=backends,
        )

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on CUDA when `amp`, a no-op otherwise."""
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch `(B, C, H, W)` in the memory format the model was prepared with."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module, *, compile: bool = False) -> nn.Module:
        """Move `model` to the device (in place) and return the module to call in training.

        The returned module may be a DDP wrapper and/or compiled; it always runs the model's own
        ``forward``. Keep a reference to `model` itself to save weights and to evaluate.
        """
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        wrapped: nn.Module = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        if compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        return wrapped

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all ranks (identity in one process)."""
        if self.world_size > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's `obj` on every rank (identity in one process)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this runtime joined it; give back the thread count."""
        if self.previous_threads is not None:
            torch.set_num_threads(self.previous_threads)
            self.previous_threads = None
        self.backends.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
            self.distributed = False

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. creating the run directory)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()
