"""Synthetic occlusion for salient crops: a second salient object pasted into the box.

On COCO photos half of the boxes hold part of another annotated instance (a rider on a horse,
people in a crowd, cups on a table), and the masks lose most there (``bench/real_overlap.py``:
0.60 vs 0.75 mIoU*). A salient image shows exactly one object, so the pixel heads never see a
box that frames one object while another overlaps it, and MIL marks only pixels *outside*
the box as background. Pasting a second salient object (cut out with its own mask) into a
box-framed salient crop, in front of or behind the framed object, with the target unchanged
except where the pasted object covers it, shows the heads exactly that case: "the object the
box frames, not its neighbour" (in the spirit of copy-paste augmentation, Ghiasi et al. 2021).
"""

from __future__ import annotations

import cv2
import numpy as np

from boxcaseg.structures import mask_to_box

# pasted object's longer side as a fraction of the crop (default range): neighbours in COCO
# boxes range from a cup beside a plate to a horse under its rider
SCALE_RANGE = (0.3, 0.9)
# an occluder in front may hide at most this share of the framed object; beyond that it goes
# behind instead, so the crop still frames the object it is labeled with
MAX_HIDDEN = 0.5
EDGE_SIGMA = 0.8  # px: soft paste edge, so a hard cut-out border is no give-away


def paste_occluder(crop: np.ndarray, target: np.ndarray, occ_image: np.ndarray,
                   occ_mask: np.ndarray, rng: np.random.Generator,
                   scale_range: tuple[float, float] = SCALE_RANGE
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """Paste the object ``occ_mask`` of ``occ_image`` over ``crop`` so that it overlaps the
    framed object ``target``.

    ``crop`` uint8 [S, S, 3], ``target`` bool [S, S] (the framed object), ``occ_image``
    uint8 [H, W, 3] with its object ``occ_mask`` bool [H, W]. The pasted object is scaled so
    its longer side is ``U(scale_range) * S``, flipped with probability 1/2, centred on a
    uniformly drawn pixel of the target's box, and put in front of the target (target loses
    the covered pixels) or behind it (target unchanged) with equal probability; in front
    turns into behind when it would hide more than ``MAX_HIDDEN`` of the target.

    Returns ``(image uint8 [S, S, 3], target bool [S, S], "front" | "behind" | "none")``;
    ``"none"`` (inputs returned unchanged) when either mask is empty.
    """
    if crop.shape[:2] != target.shape or occ_image.shape[:2] != occ_mask.shape:
        raise ValueError(f"image/mask sizes differ: {crop.shape[:2]} vs {target.shape}, "
                         f"{occ_image.shape[:2]} vs {occ_mask.shape}")
    s = crop.shape[0]
    obox, tbox = mask_to_box(occ_mask), mask_to_box(target)
    if obox is None or tbox is None:
        return crop, target, "none"
    ox1, oy1, ox2, oy2 = (float(v) for v in obox)
    scale = float(rng.uniform(*scale_range)) * s / max(ox2 - ox1, oy2 - oy1)
    tx1, ty1, tx2, ty2 = (float(v) for v in tbox)
    cu, cv = float(rng.uniform(tx1, tx2)), float(rng.uniform(ty1, ty2))
    flip = rng.random() < 0.5
    front = rng.random() < 0.5
    # source pixel edge x -> crop pixel edge u = (x - centre) * scale + cu (negated if flipped);
    # the half-pixel terms convert to OpenCV's pixel-centre addressing
    sx = -scale if flip else scale
    ocx, ocy = (ox1 + ox2) / 2, (oy1 + oy2) / 2
    m = np.array([[sx, 0.0, cu - ocx * sx + 0.5 * sx - 0.5],
                  [0.0, scale, cv - ocy * scale + 0.5 * scale - 0.5]], dtype=np.float64)
    pasted = cv2.warpAffine(occ_image, m, (s, s), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpAffine(occ_mask.astype(np.float32), m, (s, s), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), EDGE_SIGMA)
    covered = alpha >= 0.5
    if not covered.any():
        return crop, target, "none"
    if front and (target & covered).sum() > MAX_HIDDEN * target.sum():
        front = False
    if front:
        new_target = target & ~covered
    else:  # behind: the framed object stays whole and on top
        alpha = alpha * ~target
        new_target = target
    a = alpha[..., None]
    out = (a * pasted.astype(np.float32) + (1.0 - a) * crop.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), new_target, "front" if front else "behind"
