"""A tiny box dataset with GT masks and two labels files in ``boxcaseg label``'s format,
built on the fly for the report and export tests (nothing is read from disk but this)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from boxcaseg.structures import box_iou, box_to_mask, mask_to_box, mask_to_rle

# ids that are not 1..K, so a report that printed ids instead of names would show
CATEGORIES = {7: "disc", 9: "square", 12: "ring"}
W, H = 96, 80


def _shape(kind: str, cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(xx - cx, yy - cy)
    if kind == "disc":
        return d <= r
    if kind == "ring":  # a hole: polygons cannot hold it
        return (d <= r) & (d >= r * 0.45)
    return (abs(xx - cx) <= r) & (abs(yy - cy) <= r)


def make_review_data(root: Path, seed: int = 0) -> dict:
    """Write images/, gt.json, good.json (a mask per box, scored), box.json (filled boxes).

    good.json: each annotation's mask is the GT mask eroded by a different amount, its
    ``proxy_iou`` the box agreement; one is dropped (ignore_mask), one is left unanswered
    (as the labeler leaves the boxes of an unreadable image), so ordering, drop display and
    'no mask' handling are all exercised. Returns paths and the expected facts."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    layout = [  # (kind, cx, cy, r) per image
        [("disc", 25, 30, 14), ("square", 70, 45, 12)],
        [("ring", 45, 40, 22)],
        [("disc", 20, 20, 9), ("ring", 65, 50, 16), ("square", 30, 62, 8)],
        [("square", 50, 35, 20)],
    ]
    cat_of = {"disc": 7, "square": 9, "ring": 12}
    images, gt_anns, good_anns, box_anns = [], [], [], []
    aid = 100
    for i, objs in enumerate(layout):
        iid = 10 + i
        rgb = (rng.integers(40, 90, size=(H, W, 3))).astype(np.uint8)
        masks = []
        for kind, cx, cy, r in objs:
            m = _shape(kind, cx, cy, r)
            rgb[m] = np.array([200, 60 + 40 * len(masks), 80], np.uint8)
            masks.append((kind, m))
        name = f"img_{i}.png"
        Image.fromarray(rgb).save(root / "images" / name)
        images.append({"id": iid, "file_name": name, "width": W, "height": H})
        for kind, m in masks:
            aid += 1
            x1, y1, x2, y2 = mask_to_box(m)
            bbox = [x1, y1, x2 - x1, y2 - y1]
            base = {"id": aid, "image_id": iid, "category_id": cat_of[kind], "bbox": bbox,
                    "iscrowd": 0}
            gt_anns.append({**base, "segmentation": mask_to_rle(m), "area": int(m.sum())})
            k = (aid - 101) % 4  # 0-3 erosions: masks from perfect to poor
            pred = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=k)
            pred = pred.astype(bool)
            box = (x1, y1, x2, y2)
            pb = mask_to_box(pred)
            proxy = box_iou(pb, box) if pb is not None else 0.0
            good_anns.append({**base, "segmentation": mask_to_rle(pred), "area": int(pred.sum()),
                              "ignore_mask": bool(proxy < 0.75), "proxy_iou": proxy})
            filled = box_to_mask(box, H, W)
            box_anns.append({**base, "segmentation": mask_to_rle(filled),
                             "area": int(filled.sum()), "ignore_mask": False, "proxy_iou": 1.0})
    # the labeler could not answer annotation 101's box (its fields stay absent)
    unanswered = good_anns[0]["id"]
    for k in ("segmentation", "ignore_mask", "proxy_iou"):
        good_anns[0].pop(k)
    good_anns[0].pop("area")
    cats = [{"id": c, "name": n} for c, n in CATEGORIES.items()]

    def dump(name: str, anns: list, method: str | None) -> Path:
        data = {"images": images, "annotations": anns, "categories": cats}
        if method:
            data["boxcaseg_label"] = {"method": method, "config": {"drop_iou": 0.75},
                                      "summary": {"instances_labeled": len(anns)}}
        path = root / name
        path.write_text(json.dumps(data))
        return path

    paths = {"images": root / "images", "gt": dump("gt.json", gt_anns, None),
             "good": dump("good.json", good_anns, "boxcaseg"),
             "box": dump("box.json", box_anns, "box")}
    scores = {a["id"]: a.get("proxy_iou") for a in good_anns}
    return {**paths, "scores": scores, "unanswered": unanswered,
            "dropped": [a["id"] for a in good_anns if a.get("ignore_mask")],
            "ann_ids": [a["id"] for a in gt_anns], "gt_anns": gt_anns}
