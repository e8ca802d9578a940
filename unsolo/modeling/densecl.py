"""DenseCL: dense contrastive learning (Wang et al., CVPR 2021), the pre-training FreeSOLO's Free Mask relies on.

Model (as in the official ``openselfsup/models/densecl.py`` and ``necks.py::DenseCLNeck``):

* query encoder = ResNet (trainable BN, torchvision names) + :class:`DenseCLNeck`:
  a *global* head (average pool -> Linear(C, C) -> ReLU -> Linear(C, 128)) and a *dense* head
  (Conv1x1(C, C) -> ReLU -> Conv1x1(C, 128) applied at every C5 location, plus its average pool);
* key encoder = a copy updated as an exponential moving average of the query encoder (momentum 0.999);
* two queues of negatives ``(128, K)``: global keys, and the average-pooled dense keys of other images;
* dense positives: for query location ``i`` the key location ``argmax_j <q_b[i], k_b[j]>`` of the L2-normalised
  *backbone* (C5) features of the two views;
* loss ``(1 - lambda) * L_global + lambda * L_dense`` with InfoNCE at temperature 0.2 and ``lambda = 0.5``.

The loss math is written as pure functions (:func:`global_contrastive_loss`, :func:`dense_correspondence`,
:func:`dense_contrastive_loss`, :func:`enqueue_`, :func:`momentum_update_`) so that it can be tested by hand.
Notation: ``N`` images per process, ``D`` embedding size (128), ``C`` backbone channels, ``S`` C5 locations
(``H/32 * W/32``), ``K`` queue length, ``W`` world size.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import OUT_CHANNELS, ResNetBackbone

# ----------------------------------------------------------------------------------------------------------------
# Pure functions: the loss, the correspondence, the queue and the momentum update
# ----------------------------------------------------------------------------------------------------------------


def info_nce(l_pos: torch.Tensor, l_neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the positive in column 0: ``CE([l_pos, l_neg] / T, 0)`` averaged over rows.

    Args:
        l_pos: ``(M, 1)`` similarities of each query with its positive key.
        l_neg: ``(M, K)`` similarities with the negatives.
        temperature: softmax temperature ``T`` (DenseCL: 0.2).
    """
    logits = torch.cat([l_pos, l_neg], dim=1).float() / temperature  # (M, 1 + K)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def global_contrastive_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """The global (image-level, MoCo v2) part.

    Args:
        q: ``(N, D)`` L2-normalised query embeddings.
        k: ``(N, D)`` L2-normalised key embeddings of the other view of the same images (no gradient).
        queue: ``(D, K)`` L2-normalised negative keys.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue  # (N, K)
    return info_nce(l_pos, l_neg, temperature)


@torch.no_grad()
def dense_correspondence(q_b: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    """For each query location, the index of the most similar key location (backbone features).

    Args:
        q_b: ``(N, C, Sq)`` L2-normalised (over C) backbone features of the query view.
        k_b: ``(N, C, Sk)`` the same for the key view.

    Returns:
        ``(N, Sq)`` int64 indices into ``Sk`` (``argmax_j q_b[:, :, i] . k_b[:, :, j]``; ties -> first index).
    """
    sim = torch.einsum("nci,ncj->nij", q_b.float(), k_b.float())  # (N, Sq, Sk)
    return sim.argmax(dim=2)


def dense_contrastive_loss(
    q_grid: torch.Tensor, k_grid: torch.Tensor, match: torch.Tensor, queue2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The dense part: every query location against its matched key location and the pooled dense queue.

    Args:
        q_grid: ``(N, D, Sq)`` dense-head outputs of the query view, L2-normalised over D per location.
        k_grid: ``(N, D, Sk)`` the same for the key view (no gradient).
        match: ``(N, Sq)`` from :func:`dense_correspondence`.
        queue2: ``(D, K)`` pooled dense keys of other images (not other locations).

    Returns:
        the InfoNCE loss averaged over all ``N * Sq`` query locations.
    """
    n, d, sq = q_grid.shape
    k_matched = torch.gather(k_grid, 2, match.unsqueeze(1).expand(n, d, sq))  # (N, D, Sq)
    l_pos = (q_grid * k_matched).sum(dim=1).reshape(-1, 1)  # (N * Sq, 1)
    q_flat = q_grid.permute(0, 2, 1).reshape(-1, d)  # (N * Sq, D)
    l_neg = q_flat @ queue2  # (N * Sq, K)
    return info_nce(l_pos, l_neg, temperature)


def combine_losses(loss_global: torch.Tensor, loss_dense: torch.Tensor, loss_lambda: float) -> torch.Tensor:
    """``(1 - lambda) * L_global + lambda * L_dense`` (DenseCL: lambda 0.5; 0 during the optional warm-up)."""
    return (1.0 - loss_lambda) * loss_global + loss_lambda * loss_dense


@torch.no_grad()
def enqueue_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """FIFO: write ``keys (B, D)`` into ``queue (D, K)`` at ``ptr`` and advance ``ptr`` modulo ``K`` (in place).

    ``K`` must be a multiple of ``B`` (checked when the model is built), so a write never straddles the end.
    """
    b = keys.shape[0]
    k = queue.shape[1]
    p = int(ptr)
    if k % b != 0:
        raise ValueError(f"queue length {k} is not a multiple of the key batch {b}")
    queue[:, p : p + b] = keys.T.to(queue.dtype)
    ptr[0] = (p + b) % k


@torch.no_grad()
def momentum_update_(params_q: Iterable[torch.Tensor], params_k: Iterable[torch.Tensor], momentum: float) -> None:
    """``k <- m * k + (1 - m) * q`` for each pair of parameters (buffers are not averaged, as in MoCo)."""
    for pq, pk in zip(params_q, params_k):
        pk.mul_(momentum).add_(pq.detach(), alpha=1.0 - momentum)


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in a single process)
# ----------------------------------------------------------------------------------------------------------------


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no gradient). Identity in a single process."""
    if _world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle BN (MoCo): gather the key batch from all ranks, permute it, give each rank a slice.

    Returns the local slice and the inverse permutation for :func:`batch_unshuffle`. The permutation is drawn on
    rank 0 and broadcast.
    """
    world = _world()
    x_all = concat_all_gather(x)  # (W * N, ...)
    total = x_all.shape[0]
    perm = torch.randperm(total, device=x.device, generator=generator)
    if world > 1:
        dist.broadcast(perm, src=0)
    unshuffle = torch.argsort(perm)
    rank = dist.get_rank() if world > 1 else 0
    local = perm.view(world, -1)[rank]
    return x_all[local], unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` for a per-image output ``x`` of the local slice."""
    world = _world()
    x_all = concat_all_gather(x)
    rank = dist.get_rank() if world > 1 else 0
    local = unshuffle.view(world, -1)[rank]
    return x_all[local]


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class DenseCLNeck(nn.Module):
    """Global MLP head and dense 1x1-conv head on C5.

    Input ``(N, C, h, w)``; returns ``(global (N, D), dense grid (N, D, h*w), pooled dense (N, D))``, none normalised.
    Linear layers use Kaiming-normal (fan_in, ReLU) weights and zero biases; the 1x1 convs keep PyTorch's default
    initialisation (the official init routine only touches Linear and norm layers).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels), nn.ReLU(inplace=True), nn.Linear(hidden_channels, out_channels)
        )
        self.mlp2 = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, out_channels, 1)
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.mlp(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (N, D)
        dense = self.mlp2(x)  # (N, D, h, w)
        pooled = torch.flatten(F.adaptive_avg_pool2d(dense, 1), 1)  # (N, D)
        return g, dense.flatten(2), pooled  # (N, D), (N, D, S), (N, D)


class DenseCLEncoder(nn.Module):
    """ResNet (trainable BN) + :class:`DenseCLNeck`; returns normalised ``(c5 (N,C,S), g (N,D), grid (N,D,S), pooled (N,D))``."""

    def __init__(self, arch: str, feat_dim: int, hidden_dim: int | None):
        super().__init__()
        self.backbone = ResNetBackbone(arch, norm="bn")
        c5 = OUT_CHANNELS[arch][-1]
        self.neck = DenseCLNeck(c5, hidden_dim or c5, feat_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c5 = self.backbone(x)["res5"]  # (N, C, h, w)
        g, grid, pooled = self.neck(c5)
        return (
            F.normalize(c5.float().flatten(2), dim=1),  # (N, C, S)
            F.normalize(g.float(), dim=1),  # (N, D)
            F.normalize(grid.float(), dim=1),  # (N, D, S)
            F.normalize(pooled.float(), dim=1),  # (N, D)
        )


class DenseCL(nn.Module):
    """The DenseCL training model: query/key encoders, two queues, the combined loss.

    Args:
        arch: ResNet depth (``resnet18`` .. ``resnet101``; DenseCL's release: ``resnet50``/``resnet101``).
        feat_dim: embedding size ``D`` of both heads (128).
        hidden_dim: hidden width of both heads (default: C5 channels, e.g. 2048).
        queue_len: negatives per queue ``K`` (65536); must be a multiple of the global batch.
        momentum: EMA momentum of the key encoder (0.999).
        temperature: InfoNCE temperature (0.2).
        shuffle_bn: shuffle the key batch across ranks (MoCo's Shuffle BN); only has an effect under DDP.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        *,
        feat_dim: int = 128,
        hidden_dim: int | None = None,
        queue_len: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        shuffle_bn: bool = True,
    ):
        super().__init__()
        self.encoder_q = DenseCLEncoder(arch, feat_dim, hidden_dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.queue_len = queue_len
        self.momentum = momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(feat_dim, queue_len), dim=0))  # (D, K) global keys
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue2", F.normalize(torch.randn(feat_dim, queue_len), dim=0))  # (D, K) pooled dense keys
        self.register_buffer("queue2_ptr", torch.zeros(1, dtype=torch.long))

    def check_batch(self, global_batch: int) -> None:
        """The queues advance by the global batch and must wrap exactly: ``queue_len % global_batch == 0``."""
        if global_batch <= 0 or self.queue_len % global_batch != 0:
            raise UnsoloError(
                f"queue length {self.queue_len} must be a multiple of the global batch size {global_batch} "
                f"(set queue_len to e.g. {max(global_batch, (self.queue_len // max(global_batch, 1)) * global_batch)})"
            )

    @torch.no_grad()
    def momentum_update(self) -> None:
        momentum_update_(self.encoder_q.parameters(), self.encoder_k.parameters(), self.momentum)

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor, generator: torch.Generator | None):
        if self.shuffle_bn and _world() > 1:
            im_k, unshuffle = batch_shuffle(im_k, generator)
            outs = self.encoder_k(im_k)
            return tuple(batch_unshuffle(o, unshuffle) for o in outs)
        return self.encoder_k(im_k)

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, loss_lambda: float = 0.5, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """One training forward: momentum update, both encoders, losses, then the keys enter the queues.

        Args:
            im_q, im_k: ``(N, 3, H, W)`` normalised views of the same N images.
            loss_lambda: weight of the dense loss (0.5; 0 during the lambda warm-up).
            generator: random source of the Shuffle-BN permutation (rank 0's is used).

        Returns:
            ``{"loss", "loss_global", "loss_dense"}`` (``loss`` is the weighted sum that is optimised).
        """
        self.momentum_update()  # official order: update the key encoder first
        q_b, q, q_grid, _ = self.encoder_q(im_q)  # (N, C, S), (N, D), (N, D, S), (N, D)
        k_b, k, k_grid, k2 = self._keys(im_k, generator)

        # similarities, matching and losses in float32 even under float16 autocast (as the official fp32 code)
        with torch.autocast(device_type=im_q.device.type, enabled=False):
            loss_global = global_contrastive_loss(q, k, self.queue.clone().detach(), self.temperature)
            match = dense_correspondence(q_b, k_b)  # (N, S)
            loss_dense = dense_contrastive_loss(q_grid, k_grid, match, self.queue2.clone().detach(), self.temperature)
            loss = combine_losses(loss_global, loss_dense, loss_lambda)

        enqueue_(self.queue, self.queue_ptr, concat_all_gather(k))
        enqueue_(self.queue2, self.queue2_ptr, concat_all_gather(k2))
        return {"loss": loss, "loss_global": loss_global.detach(), "loss_dense": loss_dense.detach()}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The query backbone's weights with torchvision names (no ``fc``, no heads), on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder_q.backbone.state_dict().items()}


def convert_sync_bn(model: DenseCL) -> DenseCL:
    """Use SyncBatchNorm in both encoders (an alternative to Shuffle BN under DDP); disables the shuffle."""
    model.encoder_q = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_q)
    model.encoder_k = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_k)
    model.shuffle_bn = False
    return model


def export_checkpoint(backbone_state: dict[str, torch.Tensor]) -> dict:
    """The public DenseCL release layout: ``{"state_dict": {torchvision names}, "author": "DenseCL"}``."""
    state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
    return {"state_dict": state, "author": "DenseCL"}
