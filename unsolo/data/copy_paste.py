"""Copy-paste between the images of a per-GPU batch, on tensors on the training device (spec section 6.3).

Official behaviour (``BaselineTrainer.run_step`` / ``copy_and_paste``): the strong view of image ``i`` receives
objects from the weak view of image ``B-1-i`` of the same per-GPU batch. With one image per GPU an image pastes
into itself and the occlusion rule rejects every paste, so copy-paste is then effectively off (reproduced as is).

Instances are plain dicts of tensors (the model's batch format)::

    {"masks": bool (N, H, W), "boxes": float (N, 4) XYXY pixels, "labels": int64 (N,), "embs": float (N, D),
     "scores": float (N,)  (optional)}

Every per-instance tensor other than ``masks``/``boxes`` follows its instance (embeddings, labels, scores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unsolo.data.transforms import masks_to_boxes

#: A pasted object may not cover this fraction (or more) of any existing object: ``max ioy < 0.5`` to keep it.
MAX_OCCLUSION = 0.5

PER_INSTANCE_KEYS = ("labels", "embs", "scores", "usemask")


def _select(inst: dict, keep: torch.Tensor) -> dict:
    return {k: v[keep] for k, v in inst.items()}


def copy_paste(
    target_img: torch.Tensor,
    target_inst: dict,
    source_img: torch.Tensor,
    source_inst: dict,
    generator: torch.Generator,
    max_occlusion: float = MAX_OCCLUSION,
) -> tuple[torch.Tensor, dict]:
    """Paste a random subset of the source's objects into the target image (pure: inputs are not modified).

    Args:
        target_img: ``(3, H, W)`` RGB, ``uint8`` or float 0-255, the image that receives objects.
        target_inst: its instances (module docstring), masks ``(N, H, W)``.
        source_img: ``(3, Hs, Ws)`` image that gives objects; it is stretched to ``(H, W)`` (bilinear, no aspect
            preservation, as official).
        source_inst: its instances, masks ``(M, Hs, Ws)``; resized masks are ``True`` where the bilinear value is > 0.
        generator: draws ``k ~ UniformInt{0..M}`` and the ``k`` objects (without replacement); a CPU generator
            (recommended: the draws are tiny and need no device sync) or one on the images' device.
        max_occlusion: a copied object is kept only if ``max_j |copied ∩ existing_j| / |existing_j| < max_occlusion``.

    Returns:
        ``(image, instances)``: same dtype and size as the target. When something was pasted, the existing masks
        are occluded (``mask & ~alpha``), the kept copies are appended after them, and **all** boxes are tight
        boxes of the new masks (an object fully covered keeps an empty mask and a zero box). Otherwise the
        target is returned unchanged.
    """
    m = int(source_inst["masks"].shape[0])
    k = int(torch.randint(0, m + 1, (1,), generator=generator, device=generator.device))
    if m == 0 or k == 0:
        return target_img, target_inst
    device = target_img.device
    pick = torch.randperm(m, generator=generator, device=generator.device)[:k].to(device)
    h, w = target_img.shape[-2:]

    # ---- stretch the whole source image and the picked masks to the target size
    src = source_img.to(device)
    if src.shape[-2:] != (h, w):
        src = F.interpolate(src[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        if target_img.dtype == torch.uint8:
            src = src.round().clamp(0, 255)
    src = src.to(target_img.dtype)
    copied = source_inst["masks"][pick.to(source_inst["masks"].device)].to(device)  # (k, Hs, Ws)
    if copied.shape[-2:] != (h, w):
        copied = F.interpolate(copied[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
    copied = copied.bool()  # (k, H, W)
    pasted = {key: source_inst[key][pick.to(source_inst[key].device)].to(device) for key in PER_INSTANCE_KEYS if key in source_inst}

    existing = target_inst["masks"].to(device).bool()  # (N, H, W)
    if existing.shape[0] > 0:
        # ---- occlusion rule: ioy(i, j) = |copied_i ∩ existing_j| / |existing_j|
        inter = torch.einsum("khw,nhw->kn", copied.float(), existing.float())  # (k, N)
        area = existing.flatten(1).sum(dim=1).float()  # (N,)
        ioy = torch.where(area > 0, inter / area.clamp(min=1), torch.zeros_like(inter))
        keep = ioy.amax(dim=1) < max_occlusion  # (k,)
        if not bool(keep.any()):
            return target_img, target_inst
        copied = copied[keep]
        pasted = {key: v[keep] for key, v in pasted.items()}

    alpha = copied.any(dim=0)  # (H, W)
    image = torch.where(alpha[None], src, target_img.to(device))
    masks = torch.cat([existing & ~alpha[None], copied], dim=0)  # (N + k', H, W)
    out = {"masks": masks, "boxes": masks_to_boxes(masks)}
    for key in PER_INSTANCE_KEYS:
        if key in target_inst and key in pasted:
            out[key] = torch.cat([target_inst[key].to(device), pasted[key].to(target_inst[key].dtype)], dim=0)
    return image, out


def copy_paste_batch(
    strong_imgs: list[torch.Tensor],
    strong_insts: list[dict],
    weak_imgs: list[torch.Tensor],
    weak_insts: list[dict],
    generator: torch.Generator,
    max_occlusion: float = MAX_OCCLUSION,
) -> tuple[list[torch.Tensor], list[dict]]:
    """Official pairing: strong view ``i`` receives objects from weak view ``B-1-i`` (the batch in reverse order)."""
    b = len(strong_imgs)
    imgs, insts = [], []
    for i in range(b):
        j = b - 1 - i
        img, inst = copy_paste(strong_imgs[i], strong_insts[i], weak_imgs[j], weak_insts[j], generator, max_occlusion)
        imgs.append(img)
        insts.append(inst)
    return imgs, insts
