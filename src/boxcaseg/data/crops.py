"""Training crops (paper Sec. 3.2.2): box augmentation, crop + resize, salient crops.

Coordinates follow :mod:`boxcaseg.structures`: boxes are continuous XYXY in pixel-edge
coordinates (pixel ``j`` spans ``[j, j + 1)``, its centre is ``j + 0.5``). A crop box
``(x1, y1, x2, y2)`` is mapped onto an ``S x S`` patch by the affine map

    u = (x - x1) * S / (x2 - x1),    v = (y - y1) * S / (y2 - y1)

which sends the crop box exactly onto ``[0, S) x [0, S)``. The image is resampled with that
map (bilinear, zero padding outside the image) and the ground-truth box is transformed with the
same map, so the MIL target box and the pixels stay registered.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from boxcaseg.structures import mask_to_box


def box_augmentation(box_xywh: Sequence[float], rng: np.random.Generator
                     ) -> tuple[float, float, float, float]:
    """The paper's box jitter (Sec. 3.2.2 pseudo-code), on a COCO ``[x, y, w, h]`` box.

    ``x2 = x + U(-0.25, 0.25) * w``, ``y2 = y + U(-0.25, 0.25) * h``,
    ``w2 = U(0.5, 1.5) * w``, ``h2 = U(0.5, 1.5) * h``. As in the paper the *top-left corner*
    is shifted (not the centre), so the jittered box always overlaps the original one.
    Returns ``(x2, y2, w2, h2)``.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    dx, dy = rng.uniform(-0.25, 0.25, size=2)
    sw, sh = rng.uniform(0.5, 1.5, size=2)
    return (x + float(dx) * w, y + float(dy) * h, float(sw) * w, float(sh) * h)


def crop_affine(crop_box_xyxy: Sequence[float], out_size: int) -> np.ndarray:
    """2x3 float64 matrix for ``cv2.warpAffine`` sending ``crop_box`` onto an ``S x S`` patch.

    OpenCV addresses pixels by their centres (pixel ``j`` at ``x = j``), our boxes by edges
    (centre at ``j + 0.5``); the matrix includes that half-pixel shift on both sides.
    """
    x1, y1, x2, y2 = (float(v) for v in crop_box_xyxy)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"crop box {list(crop_box_xyxy)} has no area")
    sx = out_size / (x2 - x1)
    sy = out_size / (y2 - y1)
    return np.array([[sx, 0.0, (0.5 - x1) * sx - 0.5],
                     [0.0, sy, (0.5 - y1) * sy - 0.5]], dtype=np.float64)


def _warp(array: np.ndarray, matrix: np.ndarray, out_size: int, interp: int) -> np.ndarray:
    """Resample with ``matrix``; output pixels whose centre falls outside the image are 0.

    Border *replication* inside, then explicit zeroing outside: a plain constant border would
    also darken the image's own edge pixels by blending them with the padding.
    """
    out = cv2.warpAffine(array, matrix, (out_size, out_size), flags=interp,
                         borderMode=cv2.BORDER_REPLICATE)
    h, w = array.shape[:2]
    centres = np.arange(out_size) + 0.5
    # inverse of u_edge = (x_edge - x1) * s  (edge coordinates; see crop_affine)
    x_src = (centres - (matrix[0, 2] + 0.5 - 0.5 * matrix[0, 0])) / matrix[0, 0]
    y_src = (centres - (matrix[1, 2] + 0.5 - 0.5 * matrix[1, 1])) / matrix[1, 1]
    out[:, (x_src < 0) | (x_src >= w)] = 0
    out[(y_src < 0) | (y_src >= h)] = 0
    return out


def transform_box(box_xyxy: Sequence[float], crop_box_xyxy: Sequence[float], out_size: int,
                  clip: bool = True) -> tuple[float, float, float, float]:
    """Map an image-space XYXY box into crop coordinates; optionally clip it to the crop."""
    x1, y1, x2, y2 = (float(v) for v in crop_box_xyxy)
    sx = out_size / (x2 - x1)
    sy = out_size / (y2 - y1)
    bx1, by1, bx2, by2 = (float(v) for v in box_xyxy)
    out = [(bx1 - x1) * sx, (by1 - y1) * sy, (bx2 - x1) * sx, (by2 - y1) * sy]
    if clip:
        out = [min(max(v, 0.0), float(out_size)) for v in out]
    return (out[0], out[1], out[2], out[3])


def crop_and_resize(image: np.ndarray, crop_box_xyxy: Sequence[float], out_size: int,
                    gt_box_xyxy: Sequence[float]
                    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Crop ``crop_box`` out of ``image`` (RGB uint8 [H, W, 3]) and resize it to ``S x S``.

    Parts of the crop box outside the image are zero (black) padding. Returns
    ``(crop uint8 [S, S, 3], gt box XYXY in crop pixel coordinates, clipped to [0, S])``.
    The returned box is the MIL target of the patch.
    """
    m = crop_affine(crop_box_xyxy, out_size)
    crop = _warp(image, m, out_size, cv2.INTER_LINEAR)
    return crop, transform_box(gt_box_xyxy, crop_box_xyxy, out_size)


def augmented_box_crop(image: np.ndarray, gt_box_xyxy: Sequence[float], out_size: int,
                       rng: np.random.Generator, augment: bool = True
                       ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Box-supervised training patch: jitter the GT box (paper pseudo-code), crop, resize.

    Returns ``(crop uint8 [S, S, 3], GT box XYXY in the crop)``. With ``augment=False`` the
    crop box is the GT box itself (the labeler's view).
    """
    x1, y1, x2, y2 = (float(v) for v in gt_box_xyxy)
    crop_xywh = (box_augmentation((x1, y1, x2 - x1, y2 - y1), rng) if augment
                 else (x1, y1, x2 - x1, y2 - y1))
    cx, cy, cw, ch = crop_xywh
    return crop_and_resize(image, (cx, cy, cx + cw, cy + ch), out_size, gt_box_xyxy)


def salient_crop(image: np.ndarray, mask: np.ndarray, resize: int = 320, crop: int = 288,
                 rng: np.random.Generator | None = None, flip: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Salient training patch: resize to ``resize x resize``, random ``crop x crop``, h-flip.

    ``image`` RGB uint8 [H, W, 3], ``mask`` bool [H, W]. Resize + crop is one affine map (the
    crop window expressed in original pixels), applied to the image (bilinear) and to the mask
    (bilinear on 0/255, thresholded at half) so they stay aligned. Returns
    ``(crop uint8 [crop, crop, 3], mask bool [crop, crop])``. The MIL box of the patch is the
    tight box of the returned mask (:func:`salient_box`), computed after cropping since the crop
    may cut the object.
    """
    if crop > resize:
        raise ValueError(f"salient crop {crop} is larger than the resize {resize}")
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    rng = rng if rng is not None else np.random.default_rng()
    h, w = image.shape[:2]
    ox = int(rng.integers(0, resize - crop + 1))
    oy = int(rng.integers(0, resize - crop + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    fx, fy = w / resize, h / resize  # resized pixel -> original pixel
    window = (ox * fx, oy * fy, (ox + crop) * fx, (oy + crop) * fy)
    m = crop_affine(window, crop)
    out_img = _warp(image, m, crop, cv2.INTER_LINEAR)
    out_mask = _warp(mask.astype(np.uint8) * 255, m, crop, cv2.INTER_LINEAR) >= 128
    if do_flip:
        out_img = np.ascontiguousarray(out_img[:, ::-1])
        out_mask = np.ascontiguousarray(out_mask[:, ::-1])
    return out_img, out_mask


def salient_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight XYXY box of a cropped salient mask; ``(0, 0, 0, 0)`` if the mask is empty."""
    box = mask_to_box(mask)
    return (0.0, 0.0, 0.0, 0.0) if box is None else tuple(float(v) for v in box)  # type: ignore[return-value]
