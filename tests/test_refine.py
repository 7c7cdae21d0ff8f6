"""Label-time quality options: flip test-time averaging and image-driven refinement."""

import numpy as np
import pytest
import torch
from torch import nn

from boxcaseg.errors import ConfigError
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.labeler import BoxLabeler
from boxcaseg.labeling.predictor import BoxcasegPredictor
from boxcaseg.labeling.refine import grabcut, guided


def _scene(h=64, w=80, seed=0):
    """A bright rectangle (the object) on a dark noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 30, size=(h, w, 3)).astype(np.uint8)
    obj = np.zeros((h, w), bool)
    obj[12:44, 22:61] = True
    img[obj] = 200 + rng.integers(0, 30, size=(obj.sum(), 3)).astype(np.uint8)
    return img, obj


def _coarse(obj, c0, r0, h, w, cell=8):
    """The object's mask under the box, blurred to ``cell``-pixel blocks (a coarse net)."""
    local = obj[r0:r0 + h, c0:c0 + w].astype(np.float32)
    small = local.reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    return np.kron(small, np.ones((cell, cell), np.float32))


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_refinements_follow_the_image_edges():
    img, obj = _scene()
    c0, r0, h, w = 16, 8, 48, 56
    p = _coarse(obj, c0, r0, h, w)
    truth = obj[r0:r0 + h, c0:c0 + w]
    plain = _iou(p >= 0.5, truth)
    g = guided(img, c0, r0, p)
    assert g.shape == p.shape and _iou(g >= 0.5, truth) > plain
    gc = grabcut(img, c0, r0, p, 0.5)
    assert gc.shape == p.shape and gc.dtype == bool
    assert _iou(gc, truth) > plain and _iou(gc, truth) > 0.97


def test_grabcut_refinement_falls_back_without_foreground_or_background():
    img, _ = _scene()
    p = np.zeros((20, 20), np.float32)
    assert not grabcut(img, 5, 5, p, 0.5).any()
    p[:] = 1.0
    img[:] = 0  # whole-image box in a flat image: nothing to learn the background from
    assert grabcut(img, 0, 0, np.ones((64, 80), np.float32), 0.5).all()


class Lopsided(nn.Module):
    """Probability = the crop's horizontal position (0 at the left edge, 1 at the right)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict_proba(self, x, out_size=None):
        n, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return ramp + 0 * x[:, :1]


def test_flip_averaging_averages_the_mirrored_answer():
    crops = torch.randn(3, 3, 16, 16)
    plain = BoxcasegPredictor(Lopsided(), LabelConfig(crop_size=16, jit=False))
    flip = BoxcasegPredictor(Lopsided(), LabelConfig(crop_size=16, jit=False, tta_flip=True))
    p, q = plain.predict_crops(crops), flip.predict_crops(crops)
    assert torch.allclose(q, 0.5 * (p + p.flip(-1)))
    assert torch.allclose(q, torch.full_like(q, 0.5))  # a left-right ramp averages out


@pytest.mark.parametrize("refine", ["guided", "grabcut"])
def test_refinement_runs_in_the_labeler_and_stays_in_its_box(refine):
    class Coarse(nn.Module):  # the red channel, pooled to 8 x 8 cells
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def predict_proba(self, x, out_size=None):
            from boxcaseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
            red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            return nn.functional.avg_pool2d(red, 4).clamp(0, 1)

    img, obj = _scene()
    boxes = np.array([[16.0, 8.0, 72.0, 56.0]])
    base = BoxLabeler.for_method("boxcaseg", Coarse(), LabelConfig(crop_size=32, jit=False))
    ref = BoxLabeler.for_method("boxcaseg", Coarse(),
                                LabelConfig(crop_size=32, jit=False, refine=refine,
                                            refine_min_area=0))
    (m0,), (m1,) = base.label(img, boxes), ref.label(img, boxes)
    h, w = img.shape[:2]
    full = m1.full_mask(h, w)
    assert not full[:, :16].any() and not full[:8].any()  # never outside the box
    assert _iou(full, obj) >= _iou(m0.full_mask(h, w), obj)


def test_only_boxes_of_the_minimum_area_are_refined(monkeypatch):
    from boxcaseg.labeling import refine as refine_mod
    from test_labeler import RedModel

    seen = []
    real = refine_mod.refine_mask

    def spy(mode, image, c0, r0, p, threshold):
        seen.append(p.shape)
        return real(mode, image, c0, r0, p, threshold)

    monkeypatch.setattr(refine_mod, "refine_mask", spy)
    img, _ = _scene()
    boxes = [[0, 0, 8, 8], [0, 0, 40, 50], [10, 10, 30, 30]]  # areas 64, 2000, 400
    cfg = LabelConfig(crop_size=16, jit=False, refine="guided", refine_min_area=400)
    BoxLabeler.for_method("boxcaseg", RedModel(), cfg).label(img, boxes)
    assert sorted(seen) == [(20, 20), (50, 40)]
    with pytest.raises(ConfigError, match="refine_min_area"):
        LabelConfig(refine_min_area=-1)


def test_unknown_refinement_is_refused():
    with pytest.raises(ConfigError, match="refine must be one of"):
        LabelConfig(refine="crf")
