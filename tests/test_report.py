"""The HTML report: contents, order, paging, drop display, names not ids, files that resolve."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _review_data import CATEGORIES, make_review_data
from boxcaseg.cli import main
from boxcaseg.errors import DataError
from boxcaseg.evaluation.instance_iou import instance_ious
from boxcaseg.io import read_json
from boxcaseg.report.build import make_report
from boxcaseg.report.gallery import crop_window, render_panel
from boxcaseg.labeling.review import load_label_sets, load_labels, worst_first
from boxcaseg.labeling.schema import instance_score


class _Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.items: list[int] = []
        self.lazy: list[bool] = []
        self.figure_classes: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
            self.lazy.append(a.get("loading") == "lazy")
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "div" and (a.get("id") or "").startswith("ann-"):
            self.items.append(int(a["id"][4:]))
        if tag == "figure":
            self.figure_classes.append(a.get("class", ""))


def parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_review_data(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def gt_report(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_gt")
    index = make_report(data["good"], out, images_root=data["images"], gt=data["gt"],
                        baselines=[data["box"]], page_size=3)
    return out, index


def test_score_is_read_in_one_place():
    from boxcaseg.labeling.schema import score

    assert instance_score({"proxy_iou": 0.4, "ignore_mask": False}) == 0.4
    assert instance_score({"proxy_iou": 0.3}) == score({"proxy_iou": 0.3})  # the labeler's
    assert instance_score({"ignore_mask": True}) is None
    assert instance_score({"proxy_iou": float("nan")}) is None
    assert worst_first({1: 0.5, 2: None, 3: 0.1}) == [2, 3, 1]


def test_load_labels_reads_the_labeler_fields(data):
    labels = load_labels(data["good"], data["images"])
    by = labels.by_id()
    assert labels.name == "boxcaseg"
    assert not by[data["unanswered"]].labeled and by[data["unanswered"]].score is None
    assert [i for i, inst in by.items() if inst.ignore_mask] == data["dropped"]
    assert {i.category for i in labels.instances} == set(CATEGORIES.values())
    assert labels.counts() == {"instances": 7, "labeled": 6, "dropped": 1, "not_labeled": 1,
                               "skipped_boxes": 0}


def test_label_sets_sharing_a_method_are_named_by_file(data, tmp_path):
    twin = tmp_path / "boxcaseg_weak.json"
    twin.write_text(data["good"].read_text())
    names = [s.name for s in load_label_sets([data["good"], twin])]
    assert names == ["good", "boxcaseg_weak"]


def test_not_a_labels_file_is_refused(data, tmp_path):
    raw = read_json(data["gt"])
    for a in raw["annotations"]:
        a.pop("segmentation")
    path = tmp_path / "boxes_only.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="boxes_only.json: no annotation carries a mask"):
        load_labels(path)


def test_report_with_gt(data, gt_report):
    out, index = gt_report
    assert index == out / "index.html"
    html = index.read_text(encoding="utf-8")
    # summary: both methods, their counts, GT metrics computed by evaluation.instance_iou
    assert "boxcaseg" in html and ">box<" in html.replace("</span>", "<")
    ious = instance_ious(read_json(data["gt"]), read_json(data["good"]))
    # class names, never the ids (7/9/12 would only appear as numbers in counts)
    for name in CATEGORIES.values():
        assert name in html
    assert "category 7" not in html and "class 7" not in html
    # gallery: worst IoU with GT first, across pages of 3
    pages = sorted(out.glob("gallery-*.html"), key=lambda p: int(p.stem.split("-")[1]))
    assert [p.name for p in pages] == ["gallery-2.html", "gallery-3.html"]
    order = parse(index).items + [i for p in pages for i in parse(p).items]
    expected = sorted(ious, key=lambda a: (ious[a], a))
    assert order == expected
    assert order[0] == data["unanswered"]  # no mask: IoU 0, reviewed first
    # every page links to the others; every image is lazy, on disk, and a real picture
    for page in [index, *pages]:
        p = parse(page)
        assert p.srcs and all(p.lazy[i] for i, s in enumerate(p.srcs) if s.startswith("img/"))
        for s in p.srcs:
            assert not re.match(r"^[a-z]+://", s), s  # nothing from a network
            im = Image.open(out / s)
            assert min(im.size) > 10
        for h in p.hrefs:
            assert (out / h).is_file(), h
    first = parse(index)
    # each item: GT panel then one per method; the drop decision is shown
    assert first.figure_classes[:3] == ["gt", "nomask", "kept"]
    for aid in data["dropped"]:
        text = next(p.read_text() for p in [index, *pages] if f'id="ann-{aid}"' in p.read_text())
        item = text.split(f'id="ann-{aid}"', 1)[1].split('class="item"', 1)[0]
        # the labels under review dropped it, the filled box kept it
        assert re.findall(r'<figure class="(\w+)"', item) == ["gt", "dropped", "kept"]
    for plot in ("scores.png", "iou.png", "score_vs_iou.png", "kept.png"):
        assert (out / "plots" / plot).stat().st_size > 5000
    assert "http://" not in html and "https://" not in html


def test_report_without_gt_sorts_by_score(data, tmp_path):
    index = make_report(data["good"], tmp_path / "r", images_root=data["images"])
    order = parse(index).items
    scores = data["scores"]
    assert order == worst_first(scores)
    assert order[0] == data["unanswered"]
    assert not (tmp_path / "r" / "plots" / "iou.png").exists()
    assert "mIoU*" not in index.read_text()


def test_limit_and_rerun_leave_no_stale_files(data, tmp_path):
    out = tmp_path / "r"
    make_report(data["good"], out, images_root=data["images"], page_size=2)
    assert (out / "gallery-4.html").is_file()
    make_report(data["good"], out, images_root=data["images"], limit=2)
    assert not list(out.glob("gallery-*.html"))
    assert len(list((out / "img").iterdir())) == 2
    assert "5 more instances were left out" in (out / "index.html").read_text()


def test_panel_shows_mask_gt_and_box():
    rgb = np.full((60, 80, 3), 50, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    gt = np.zeros_like(mask)
    gt[18:42, 28:52] = True
    box = (30.0, 20.0, 50.0, 40.0)
    win = crop_window(box, 60, 80)
    assert win[0] < 30 and win[2] > 50 and win[1] < 20 and win[3] > 40
    panel = render_panel(rgb, win, box, mask, (255, 0, 0), gt, size=100)
    assert max(panel.shape[:2]) == 100
    red = (panel[..., 0] > 200) & (panel[..., 1] < 80)
    white = (panel > 240).all(-1)
    assert red.sum() > 50 and white.sum() > 50
    bare = render_panel(rgb, win, box, None, (255, 0, 0), None, size=100)
    assert not ((bare[..., 0] > 200) & (bare[..., 1] < 80)).any()


def test_bad_baseline_is_named(data, tmp_path):
    raw = read_json(data["box"])
    raw["annotations"][0]["image_id"] = raw["images"][1]["id"]
    other = tmp_path / "moved.json"
    other.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="moved.json: annotation 101"):
        make_report(data["good"], tmp_path / "r", images_root=data["images"],
                    baselines=[other])


def test_cli_report(data, tmp_path, capsys):
    rc = main(["report", str(data["good"]), "--images", str(data["images"]), "--gt",
               str(data["gt"]), "--baseline", str(data["box"]), "--out", str(tmp_path / "r"),
               "--no-progress"])
    assert rc == 0
    assert str((tmp_path / "r" / "index.html").resolve()) in capsys.readouterr().out
    assert main(["report", str(data["good"]), "--images", str(data["images"]), "--out",
                 str(tmp_path / "r2"), "--page-size", "0"]) == 2  # bad input


def test_report_files_are_readable_by_others(data, tmp_path):
    """A report is for sharing: no private 0600 files (atomic writes go through mkstemp)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        index = make_report(data["good"], tmp_path / "r", images_root=data["images"])
    finally:
        os.umask(old)
    for f in [index, *(tmp_path / "r" / "img").iterdir(), *(tmp_path / "r" / "plots").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
