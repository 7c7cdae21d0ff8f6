"""BoxCaseg losses (paper Sec. 3.3): MIL loss with smoothness term (Eq. 1-2), fused pixel loss
(Eq. 3) and their sum over a mixed batch (Eq. 4). Pure functions of logits; all numerically
stable (no ``log(sigmoid(.))`` of saturated values).

Boxes are float XYXY in map pixel coordinates; a box covers the pixels whose centres lie inside
it (the :mod:`boxcaseg.structures` convention): row ``i`` is inside iff ``y1 <= i + 0.5 < y2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _inside(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """``[N, n]`` bool: pixel centre ``i + 0.5`` in ``[lo, hi)`` for each of the N boxes."""
    centres = torch.arange(n, device=lo.device, dtype=lo.dtype) + 0.5
    return (lo[:, None] <= centres) & (centres < hi[:, None])


def smoothness_term(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2 as a mean: the mean over every ordered pair of 8-connected pixels that both lie in
    the map, over all maps in the batch, of ``(sigmoid(a) - sigmoid(b))**2``.

    Each unordered pair appears twice with the same value, so the mean over the four "forward"
    directions (right, down, down-right, down-left) equals the mean over all eight. Maps with
    no neighbour pairs (1x1) give 0.
    """
    s = torch.sigmoid(logits)
    pairs = (s[..., :, 1:] - s[..., :, :-1],  # right
             s[..., 1:, :] - s[..., :-1, :],  # down
             s[..., 1:, 1:] - s[..., :-1, :-1],  # down-right
             s[..., 1:, :-1] - s[..., :-1, 1:])  # down-left
    count = sum(d.numel() for d in pairs)
    if count == 0:
        return logits.sum() * 0.0
    return sum(d.square().sum() for d in pairs) / count


def mil_loss(logits: torch.Tensor, boxes: torch.Tensor, smooth_weight: float = 0.05
             ) -> torch.Tensor:
    """MIL loss with the box tightness prior (Eq. 1) plus ``smooth_weight`` x Eq. 2.

    ``logits``: ``[N, 1, H, W]`` raw scores; ``boxes``: ``[N, 4]`` float XYXY in map pixels.
    Every full row and every full column of each map is a bag (paper Fig. 3: a positive row is
    the whole image row crossing the box). Row ``i`` is positive iff ``y1 <= i + 0.5 < y2``,
    column ``j`` iff ``x1 <= j + 0.5 < x2``; all others are negative, so a degenerate box (no
    covered row or column) gives all-negative bags. A bag's score is the max of its sigmoid
    scores, computed as ``sigmoid(max logit)`` (sigmoid is monotone) so the BCE can be taken
    from the logit stably.

    Normalisation: the paper writes sums; like the authors' released code we take means, i.e.
    the unary term is the mean BCE over all ``N * (H + W)`` bags and the smoothness term the
    mean over neighbour pairs (:func:`smoothness_term`; the released code instead zero-pads the
    map so border pixels are also compared with 0 -- we compare only pairs inside the map).
    Returns a scalar tensor (0 for an empty batch).
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be [N, 1, H, W], got {tuple(logits.shape)}")
    n, _, h, w = logits.shape
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must be [N={n}, 4], got {tuple(boxes.shape)}")
    if n == 0:
        return logits.sum() * 0.0
    x = logits[:, 0]
    row_scores = x.amax(dim=2)  # [N, H]: bag = row i, all its columns
    col_scores = x.amax(dim=1)  # [N, W]
    b = boxes.to(device=logits.device)
    row_pos = _inside(b[:, 1], b[:, 3], h)
    col_pos = _inside(b[:, 0], b[:, 2], w)
    scores = torch.cat([row_scores, col_scores], dim=1)
    labels = torch.cat([row_pos, col_pos], dim=1).to(logits.dtype)
    unary = F.binary_cross_entropy_with_logits(scores, labels)
    if smooth_weight == 0:
        return unary
    return unary + smooth_weight * smoothness_term(logits)


def pixel_loss(salient_logits: torch.Tensor, transferred_logits: torch.Tensor,
               masks: torch.Tensor, alpha: float = 0.7,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3: mean over pixels of BCE(p, mask), ``p = alpha*sigmoid(a) + (1-alpha)*sigmoid(t)``.

    All inputs ``[N, 1, H, W]`` (masks 0/1 float or bool). ``log p`` and ``log(1 - p)`` are
    computed in log space (``logaddexp`` of ``log alpha + logsigmoid(a)`` and
    ``log(1 - alpha) + logsigmoid(t)``, using ``1 - sigmoid(z) = sigmoid(-z)``), so the loss and
    its gradient stay finite for any finite logits. ``alpha`` 1 or 0 is exactly the
    BCE-with-logits of the salient or the transferred head alone.

    ``weights`` (``[N]``, e.g. teacher mask scores, ``data.teacher``): each map's mean BCE
    times its weight, summed and divided by N (not by the weights' sum: a mask of weight 0.5
    pulls half as hard whatever else is in the batch). None is the plain mean.
    """
    target = masks.to(salient_logits.dtype)
    if weights is not None:
        if alpha >= 1.0:
            bce = F.binary_cross_entropy_with_logits(salient_logits, target, reduction="none")
        elif alpha <= 0.0:
            bce = F.binary_cross_entropy_with_logits(transferred_logits, target,
                                                     reduction="none")
        else:
            bce = _fused_bce(salient_logits, transferred_logits, target, alpha)
        return weighted_mean(bce, weights)
    if alpha >= 1.0:
        return F.binary_cross_entropy_with_logits(salient_logits, target)
    if alpha <= 0.0:
        return F.binary_cross_entropy_with_logits(transferred_logits, target)
    return _fused_bce(salient_logits, transferred_logits, target, alpha).mean()


def _fused_bce(a: torch.Tensor, t: torch.Tensor, target: torch.Tensor, alpha: float
               ) -> torch.Tensor:
    la, lb = math.log(alpha), math.log1p(-alpha)
    log_p = torch.logaddexp(la + F.logsigmoid(a), lb + F.logsigmoid(t))
    log_q = torch.logaddexp(la + F.logsigmoid(-a), lb + F.logsigmoid(-t))
    return -(target * log_p + (1 - target) * log_q)


def weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i * mean(per_pixel[i]) / N`` for ``per_pixel`` ``[N, ...]``, ``weights`` ``[N]``."""
    n = per_pixel.shape[0]
    if n == 0:
        return per_pixel.sum() * 0.0
    w = weights.to(device=per_pixel.device, dtype=per_pixel.dtype).reshape(n)
    return (per_pixel.reshape(n, -1).mean(1) * w).sum() / n


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB ``[N, 3, H, W]`` in 0..255 -> CIE Lab (D65), L in 0..100."""
    x = (images.float() / 255.0).clamp(0, 1)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                      [0.0193, 0.1192, 0.9505]], dtype=lin.dtype, device=lin.device)
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    xyz = xyz / torch.tensor([0.95047, 1.0, 1.08883], dtype=lin.dtype,
                             device=lin.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], dim=1)


PAIRWISE_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))  # right, down, two diagonals


def pairwise_color_loss(logits: torch.Tensor, images: torch.Tensor, boxes: torch.Tensor,
                        stride: int = 4, dilation: int = 2, tau: float = 0.3,
                        theta: float = 2.0) -> torch.Tensor:
    """BoxInst's pairwise term (Tian et al., CVPR 2021): neighbouring pixels of similar colour
    should take the same label.

    At the network's feature resolution (logits and images average-pooled by ``stride``), each
    pixel is paired with its neighbours ``dilation`` apart in 8 directions; a pair counts when
    its colour similarity ``exp(-||Lab_i - Lab_j|| / theta)`` is at least ``tau`` and both
    pixels lie in the box. Its loss is ``-log P(same label)``, ``P = p_i p_j + (1-p_i)(1-p_j)``
    in log space. ``logits`` ``[N, 1, H, W]``, ``images`` ``[N, 3, H, W]`` RGB 0..255,
    ``boxes`` ``[N, 4]`` XYXY in those pixels. The mean over counted pairs (0 if none).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    x = F.avg_pool2d(logits, stride) if stride > 1 else logits
    lab = rgb_to_lab(F.avg_pool2d(images.float(), stride) if stride > 1 else images)
    n, _, h, w = x.shape
    b = boxes.to(device=x.device, dtype=x.dtype) / stride
    inside = (_inside(b[:, 1], b[:, 3], h)[:, :, None] & _inside(b[:, 0], b[:, 2], w)[:, None, :])
    log_fg, log_bg = F.logsigmoid(x[:, 0]), F.logsigmoid(-x[:, 0])
    total, count = x.sum() * 0.0, 0
    for dy, dx in PAIRWISE_OFFSETS:
        dy, dx = dy * dilation, dx * dilation
        ys, xs = slice(0, h - dy), slice(max(0, -dx), w - max(dx, 0))
        yt, xt = slice(dy, h), slice(max(dx, 0), w - max(0, -dx))
        if h - dy <= 0 or w - abs(dx) <= 0:
            continue
        sim = torch.exp(-(lab[:, :, ys, xs] - lab[:, :, yt, xt]).norm(dim=1) / theta)
        keep = (sim >= tau) & inside[:, ys, xs] & inside[:, yt, xt]
        if not bool(keep.any()):
            continue
        same = torch.logaddexp(log_fg[:, ys, xs] + log_fg[:, yt, xt],
                               log_bg[:, ys, xs] + log_bg[:, yt, xt])
        total = total - same[keep].sum()
        count += int(keep.sum())
    return total / max(count, 1)


def _get(batch: dict[str, Any], *names: str) -> Any:
    for k in names:
        if k in batch:
            return batch[k]
    raise KeyError(f"batch needs one of {names}; has {sorted(batch)}")


def _pixel_weights(batch: dict[str, Any], sal: torch.Tensor) -> torch.Tensor | None:
    """The pixel-supervised rows' weights, or None when there are none or all are 1."""
    w = batch.get("weight")
    if w is None:
        return None
    w = torch.as_tensor(w).reshape(-1)
    w = w[sal.to(w.device)]
    return None if bool((w == 1).all()) else w


def boxcaseg_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: Any
                  ) -> dict[str, torch.Tensor]:
    """Eq. 4 over a mixed batch of box crops and salient crops.

    ``outputs``: the model's logits ``{"weak", ["salient"], ["transferred"]}``, each
    ``[N, 1, H, W]``. ``batch``: ``"is_salient"`` bool ``[N]``; ``"box"`` (or ``"boxes"``)
    ``[N, 4]`` XYXY crop pixels -- the augmented box for box crops, the tight box of the mask
    for salient crops (the dataset provides both); ``"mask"`` (or ``"masks"``)
    ``[N, 1, H, W]``, read only for salient rows. ``cfg``: anything with ``alpha`` and
    optionally ``smooth_weight`` (default 0.05).

    Averaging (documented choice, matching the authors' code): the MIL term is the mean over
    ALL images of the batch (as every map has the same size this is
    ``(n_box * mil_weak_box + n_sal * mil_weak_salient) / N``); the pixel term is the mean over
    all pixels of the salient images, added with weight 1 (lambda of Eq. 4) when the batch has
    salient images and a pixel head. With one pixel head only, its plain BCE is used.

    ``cfg.pairwise_weight`` > 0 adds BoxInst's colour-affinity term on the weak head's box
    crops (:func:`pairwise_color_loss`, returned as ``"pairwise"``; off in the paper).

    Returns ``{"mil_weak_box", "mil_weak_salient", "pixel", "total"}`` (a term whose group is
    empty is 0). ``total`` also carries ``0 * mean`` of every head output that no term used in
    this batch, so every parameter gets a (zero) gradient -- DDP without
    ``find_unused_parameters`` requires it. NaN checks are the caller's business.
    """
    weak = outputs["weak"]
    n = weak.shape[0]
    smooth = float(getattr(cfg, "smooth_weight", 0.05))
    alpha = float(getattr(cfg, "alpha", 0.7))
    sal = torch.as_tensor(batch["is_salient"], device=weak.device).reshape(-1).bool()
    if sal.numel() != n:
        raise ValueError(f"is_salient has {sal.numel()} entries for a batch of {n}")
    boxes = _get(batch, "box", "boxes")
    zero = weak.sum() * 0.0
    n_sal = int(sal.sum())
    n_box = n - n_sal
    mil_box = mil_loss(weak[~sal], boxes[~sal.to(boxes.device)], smooth) if n_box else zero
    mil_sal = mil_loss(weak[sal], boxes[sal.to(boxes.device)], smooth) if n_sal else zero
    mil = (n_box * mil_box + n_sal * mil_sal) / max(n, 1)
    pair_w = float(getattr(cfg, "pairwise_weight", 0.0))
    pairwise = zero
    if pair_w > 0 and n_box:
        rows = ~sal.to(boxes.device)
        pairwise = pairwise_color_loss(weak[~sal], batch["image"][rows].to(weak.device),
                                       boxes[rows])

    pixel = zero
    used = {"weak"}
    a_out, t_out = outputs.get("salient"), outputs.get("transferred")
    if n_sal and (a_out is not None or t_out is not None):
        masks = _get(batch, "mask", "masks")[sal.to(boxes.device)].to(weak.device)
        weights = _pixel_weights(batch, sal)
        if a_out is not None and t_out is not None:
            pixel = pixel_loss(a_out[sal], t_out[sal], masks, alpha, weights)
            used |= {k for k, a in (("salient", alpha > 0), ("transferred", alpha < 1)) if a}
        else:
            only = a_out if a_out is not None else t_out
            if weights is None:
                pixel = F.binary_cross_entropy_with_logits(only[sal], masks.to(only.dtype))
            else:
                pixel = weighted_mean(F.binary_cross_entropy_with_logits(
                    only[sal], masks.to(only.dtype), reduction="none"), weights)
            used.add("salient" if a_out is not None else "transferred")
    total = mil + pixel
    if pair_w > 0:
        total = total + pair_w * pairwise
    for k, v in outputs.items():
        if k not in used:
            total = total + 0.0 * v.mean()
    out = {"mil_weak_box": mil_box, "mil_weak_salient": mil_sal, "pixel": pixel}
    if pair_w > 0:
        out["pairwise"] = pairwise
    out["total"] = total
    return out
