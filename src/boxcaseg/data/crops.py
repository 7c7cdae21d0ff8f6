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


JITTER_MODES = ("centre", "corner")


def box_augmentation(box_xywh: Sequence[float], rng: np.random.Generator,
                     mode: str = "centre") -> tuple[float, float, float, float]:
    """The paper's box jitter (Sec. 3.2.2 pseudo-code) on a COCO ``[x, y, w, h]`` box.

    Both modes draw ``dx, dy ~ U(-0.25, 0.25)`` and ``sw, sh ~ U(0.5, 1.5)``:

    * ``"centre"`` (default; the authors' released code): the box *centre* moves by
      ``(dx * w, dy * h)`` and the box is rescaled to ``(sw * w, sh * h)`` about that centre.
    * ``"corner"`` (a literal reading of the pseudo-code, which names the result ``x2, y2``
      without saying whether it is a corner or a centre): the *top-left corner* moves and the
      size changes from there, which also drifts the centre by ``(sw - 1) * w / 2``. The crop
      centre then spreads about 3x wider and ~6 % of crops show less than half of the object
      (measured on real photos, bench/results_real.md).

    Returns ``(x2, y2, w2, h2)`` (top-left corner and size). Clipping to the image is the
    caller's business (:func:`augmented_box_crop`).
    """
    x, y, w, h = (float(v) for v in box_xywh)
    dx, dy = rng.uniform(-0.25, 0.25, size=2)
    sw, sh = rng.uniform(0.5, 1.5, size=2)
    w2, h2 = float(sw) * w, float(sh) * h
    if mode == "corner":
        return (x + float(dx) * w, y + float(dy) * h, w2, h2)
    if mode != "centre":
        raise ValueError(f"box jitter mode must be one of {JITTER_MODES}, got {mode!r}")
    cx, cy = x + w / 2 + float(dx) * w, y + h / 2 + float(dy) * h
    return (cx - w2 / 2, cy - h2 / 2, w2, h2)


def clip_crop_box(crop_xyxy: Sequence[float], width: int, height: int,
                  min_size: float = 1.0) -> tuple[float, float, float, float]:
    """Clip a crop box to the image ``[0, W] x [0, H]``, keeping at least ``min_size`` px."""
    x1, y1, x2, y2 = (float(v) for v in crop_xyxy)
    x1, x2 = max(x1, 0.0), min(x2, float(width))
    y1, y2 = max(y1, 0.0), min(y2, float(height))
    if x2 - x1 < min_size:
        c = min(max((x1 + x2) / 2, min_size / 2), width - min_size / 2)
        x1, x2 = c - min_size / 2, c + min_size / 2
    if y2 - y1 < min_size:
        c = min(max((y1 + y2) / 2, min_size / 2), height - min_size / 2)
        y1, y2 = c - min_size / 2, c + min_size / 2
    return (x1, y1, x2, y2)


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
                       rng: np.random.Generator, augment: bool = True, jitter: str = "centre",
                       clip: bool | None = None
                       ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Box-supervised training patch: jitter the GT box (paper pseudo-code), crop, resize.

    Returns ``(crop uint8 [S, S, 3], GT box XYXY in the crop)``. With ``augment=False`` the
    crop box is the GT box itself (the labeler's view). ``clip`` (default: on for the
    ``"centre"`` jitter, as in the released code; off for ``"corner"``, as before) clips the
    jittered crop box to the image, so crops show image content rather than black padding.
    """
    x1, y1, x2, y2 = (float(v) for v in gt_box_xyxy)
    crop_xywh = (box_augmentation((x1, y1, x2 - x1, y2 - y1), rng, jitter) if augment
                 else (x1, y1, x2 - x1, y2 - y1))
    cx, cy, cw, ch = crop_xywh
    crop_box = (cx, cy, cx + cw, cy + ch)
    if augment and (clip if clip is not None else jitter == "centre"):
        crop_box = clip_crop_box(crop_box, image.shape[1], image.shape[0])
    return crop_and_resize(image, crop_box, out_size, gt_box_xyxy)


def salient_box_crop(image: np.ndarray, mask: np.ndarray, out_size: int,
                     rng: np.random.Generator, jitter: str = "centre", flip: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A salient image framed like a box crop: the mask's tight box, jittered, cropped, resized.

    Labeling crops each box tightly, so the object touches the crop's borders; the paper's
    whole-image salient crops (:func:`salient_crop`) never show an object framed that way.
    This gives the pixel heads box-framed views of salient objects, with the same jitter as
    box images. Returns ``(crop uint8 [S, S, 3], mask bool [S, S])``; an empty mask falls
    back to the whole image.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    h, w = image.shape[:2]
    box = mask_to_box(mask)
    box = (0.0, 0.0, float(w), float(h)) if box is None else tuple(float(v) for v in box)
    x1, y1, x2, y2 = box
    cx, cy, cw, ch = box_augmentation((x1, y1, x2 - x1, y2 - y1), rng, jitter)
    crop_box = clip_crop_box((cx, cy, cx + cw, cy + ch), w, h)
    m = crop_affine(crop_box, out_size)
    out_img = _warp(image, m, out_size, cv2.INTER_LINEAR)
    out_mask = _warp(mask.astype(np.uint8) * 255, m, out_size, cv2.INTER_LINEAR) >= 128
    if flip and rng.random() < 0.5:
        out_img = np.ascontiguousarray(out_img[:, ::-1])
        out_mask = np.ascontiguousarray(out_mask[:, ::-1])
    return out_img, out_mask


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
