"""PyTorch distributed set-up from torchrun's environment: gloo on CPU, nccl on GPU, nothing home-made."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' takes this rank's GPU when there is one, else the CPU; 'cuda' without a GPU is an error."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={preference} but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a single process needs none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    """Leave the process group cleanly so torchrun sees a normal exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity without a process group); used for logging, not gradients."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def all_reduce_sum_int(value: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def gather_embeddings(
    image: torch.Tensor, text: torch.Tensor, caption_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Every rank's image and text embeddings, gradients flowing back to each rank's own slice.

    As open_clip's gather-with-grad: each rank computes the loss over the global batch, and DDP's gradient averaging
    then yields the gradient of one big batch. Ranks may hold different counts (dropped samples), so rows are padded
    to the largest count and stripped after the gather. Returns images, texts, caption -> global image index, and
    this rank's offsets into the gathered images and texts.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return image, text, caption_image, 0, 0
    counts = torch.tensor([image.shape[0], text.shape[0]], device=image.device)
    all_counts = [torch.zeros_like(counts) for _ in range(dist.get_world_size())]
    dist.all_gather(all_counts, counts)
    n_images = [int(c[0]) for c in all_counts]
    n_texts = [int(c[1]) for c in all_counts]
    images = _gather_padded(image, n_images)
    texts = _gather_padded(text, n_texts)
    mapped = [caption_image.new_zeros(max(n_texts)) for _ in n_texts]
    dist.all_gather(mapped, _pad_rows(caption_image, max(n_texts)))  # labels need no gradient
    offsets = [sum(n_images[:r]) for r in range(len(n_images))]
    labels = torch.cat([m[:n] + off for m, n, off in zip(mapped, n_texts, offsets, strict=True)])
    rank = dist.get_rank()
    return images, texts, labels, offsets[rank], sum(n_texts[:rank])


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad])


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (each rank's loss uses all)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads).contiguous()
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def _gather_padded(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    parts = _AllGatherWithGrad.apply(_pad_rows(tensor, max(counts)))
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
