"""Overlay drawing shared by predict, the demo and the report (torchvision draw utils)."""

from __future__ import annotations

import numpy as np

from boxcaseg.maskrcnn.visualize import draw_boxes, draw_instances, draw_masks, outline, palette
from boxcaseg.structures import mask_to_rle


def _square(h=40, w=50, y=(10, 30), x=(15, 35)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y[0]:y[1], x[0]:x[1]] = True
    return m


def test_outline_is_the_inner_boundary_band():
    m = _square()
    o1, o2 = outline(m, 1), outline(m, 2)
    assert not (o1 & ~m).any()                   # inside the mask only
    assert o1.sum() == 2 * (20 + 20) - 4         # the 1-px ring of a 20x20 square
    assert o2.sum() == 20 * 20 - 16 * 16
    ring = m.copy()
    ring[18:22, 23:27] = False                   # a hole gets its own outline
    assert outline(ring, 1).sum() == o1.sum() + 6 * 6 - 4 * 4  # 8-neighbours of the hole
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True                           # touching the border counts as boundary
    assert outline(edge, 1)[:, 0].all()


def test_draw_masks_fill_and_outline():
    rgb = np.full((40, 50, 3), 100, np.uint8)
    m = _square()
    filled = draw_masks(rgb, [m], [(255, 0, 0)], alpha=0.5)
    assert (abs(filled[m].astype(int) - [178, 50, 50]) <= 1).all()
    assert (filled[~m] == 100).all()
    lined = draw_masks(rgb, [m], [(0, 255, 0)], alpha=0.0, outline_width=1)
    green = (lined == [0, 255, 0]).all(-1)
    np.testing.assert_array_equal(green, outline(m, 1))
    assert (rgb == 100).all()                    # the input is not drawn on


def test_draw_instances_masks_boxes_and_labels():
    rgb = np.full((60, 80, 3), 30, np.uint8)
    m = _square(60, 80, (20, 40), (20, 50))
    res = [{"segmentation": mask_to_rle(m), "bbox": [20, 20, 30, 20], "score": 0.9,
            "category_id": 3}]
    out = draw_instances(rgb, res, {3: "cat"})
    colour = np.array(palette(1)[0])
    assert (out[25:35, 30:40] != 30).any(-1).all()      # mask filled
    assert (out[39, 20:50] == colour).all()             # box edges (pixel edges 20..50,
    assert (out[30:40, 20] == colour).all()             # 20..40) in the instance colour
    assert (out[:15] == 30).all() and (out[45:] == 30).all()  # nothing outside the box
    unlabeled = draw_boxes(rgb, [(20, 20, 50, 40)], [tuple(colour)])
    assert not np.array_equal(out[20:30, 20:50], draw_masks(unlabeled, [m], [tuple(colour)])
                              [20:30, 20:50])    # the label text changed pixels
    assert draw_instances(rgb, [], {}).tolist() == rgb.tolist()
