"""The public Python API: the README's example runs as written, and the in-memory labeler
gives exactly what ``boxcaseg label`` writes."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import boxcaseg
from boxcaseg.cli import main as cli_main
from boxcaseg.config import to_dict
from boxcaseg.data.demo import make_demo_data
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.inputs import BoxInput
from boxcaseg.model import ModelConfig, build_model
from boxcaseg.structures import segmentation_to_mask

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The files ``boxcaseg demo`` leaves that the example reads: the data and a checkpoint
    (tiny, untrained: the example needs masks, not quality)."""
    root = tmp_path_factory.mktemp("api")
    make_demo_data(root / "runs/demo/data", 0, n_salient=4, n_train=3, n_val=1, image_size=96,
                   progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none", head_channels=16,
                      transfer_hidden=8)
    ckpt = root / "runs/demo/boxcaseg/final.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": build_model(cfg).state_dict(), "model_config": to_dict(cfg),
                "train_config": {"crop_size": 64}}, ckpt)
    return root


def test_readme_example_runs(demo_run, monkeypatch, capsys):
    monkeypatch.chdir(demo_run)
    exec(compile(_readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert len(re.findall(r"score \d\.\d{3}  proxy IoU \d\.\d{3}  keep (True|False)", out)) == 2
    assert re.search(r"\d+ masks kept", out)


def test_api_names_are_exported():
    for name in ("BoxLabeler", "LabeledMask", "iter_labels", "label_dataset", "MaskSource",
                 "LabelConfig", "load_labels"):
        assert getattr(boxcaseg, name) is getattr(boxcaseg.labeling, name)
    with pytest.raises(AttributeError):
        boxcaseg.no_such_name  # noqa: B018


def test_in_memory_answers_equal_the_label_command(demo_run, tmp_path):
    """Masks, scores, proxy IoUs and keep decisions of the API are the CLI's, box for box."""
    data = demo_run / "runs/demo/data/boxes"
    ckpt = demo_run / "runs/demo/boxcaseg/final.pt"
    out = tmp_path / "labels.json"
    assert cli_main(["label", "--checkpoint", str(ckpt), "--boxes", str(data / "train.json"),
                     "--images", str(data / "images"), "--out", str(out), "--no-progress",
                     "drop_iou=0.5"]) == 0
    written = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    labeler = boxcaseg.BoxLabeler.from_checkpoint(ckpt, LabelConfig(drop_iou=0.5))
    n = 0
    for r in boxcaseg.iter_labels(labeler, data / "train.json", data / "images"):
        for aid, m in zip(r.ann_ids, r.labels.masks):
            a = written[aid]
            full = segmentation_to_mask(a["segmentation"], r.task.height, r.task.width)
            assert np.array_equal(full, m.full_mask(r.task.height, r.task.width))
            assert (a["score"], a["proxy_iou"], a["ignore_mask"]) == (m.score, m.proxy_iou,
                                                                       m.ignore)
            n += 1
    assert n == len([a for a in written.values() if "proxy_iou" in a]) > 0


def test_a_mask_source_of_your_own_is_one_class(tmp_path):
    """A user's source plugs into merge, drop and score: here a source that answers the top
    half of each box, with its own quality estimate."""
    from boxcaseg.labeling.masks import BoxMask
    from boxcaseg.structures import snap_box

    class TopHalf(boxcaseg.MaskSource):
        name = "tophalf"

        def masks(self, images, boxes):
            out = []
            for image, bs in zip(images, boxes):
                h, w = image.shape[:2]
                ms = []
                for b in bs:
                    c0, r0, c1, r1 = snap_box(b, h, w)
                    m = np.zeros((r1 - r0, c1 - c0), bool)
                    m[: (r1 - r0) // 2] = True
                    ms.append(BoxMask(c0, r0, m))
                out.append(boxcaseg.SourceMasks(ms, [0.5] * len(ms)))
            return out

    image = np.zeros((40, 50, 3), np.uint8)
    boxes = [[0, 0, 40, 40], [10, 0, 20, 10]]
    big, small = boxcaseg.BoxLabeler(TopHalf(), LabelConfig(drop_iou=0.4)).label(image, boxes)
    assert small.area == 50 and small.keep and small.source == "tophalf"
    # merge: the small box's pixels left the big mask; half a box is proxy IoU 0.5
    assert big.area == 800 - 50 and big.proxy_iou == pytest.approx(0.5) and big.keep
    overlap = 100 / 1600  # the boxes' IoU
    assert small.score == pytest.approx(0.5 * 1.0 * np.sqrt(0.5) * (1 - overlap), abs=1e-6)
    assert big.score == pytest.approx(0.5 * (750 / 800) * np.sqrt(0.5) * (1 - overlap), abs=1e-6)
    # the keep rule: 0.5 < drop_iou 0.9 drops both
    strict = boxcaseg.BoxLabeler(TopHalf(), LabelConfig(drop_iou=0.9)).label(image, boxes)
    assert [m.keep for m in strict] == [False, False]


def test_boxinput_and_iter_labels_accept_loaded_data(demo_run):
    from boxcaseg.data.coco import load_coco

    data = demo_run / "runs/demo/data/boxes"
    coco = load_coco(data / "train.json", data / "images")
    labeler = boxcaseg.BoxLabeler.for_method("box")
    a = [r.image_id for r in boxcaseg.iter_labels(labeler, coco)]
    b = [r.image_id for r in boxcaseg.iter_labels(labeler, BoxInput.from_coco(coco))]
    assert a == b == [im.id for im in coco.images]
