"""SAM as a mask source (labeling/sam.py) with tiny random models built from the official
segment-anything classes: prompt geometry, pasting, batching, the loader's errors, the CLI."""

from __future__ import annotations

import json
import sys
from functools import partial

import numpy as np
import pytest
import torch

sa = pytest.importorskip("segment_anything", reason='the sam extra: pip install -e ".[sam]"')

from segment_anything import SamPredictor  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer)

from boxcaseg.errors import ConfigError, DataError  # noqa: E402
from boxcaseg.labeling.masks import BoxMask  # noqa: E402
from boxcaseg.labeling.sam import SamSource, load_sam  # noqa: E402
from boxcaseg.structures import box_to_mask, rle_to_mask, snap_box  # noqa: E402


def tiny_sam(img_size: int = 64, dim: int = 32, depth: int = 2, seed: int = 0,
             checkpoint=None) -> Sam:
    """A SAM of the official architecture, ~100 k random weights (``_build_sam`` in small)."""
    torch.manual_seed(seed)
    emb = img_size // 8
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=8, embed_dim=dim, depth=depth, num_heads=2,
            mlp_ratio=2, out_chans=32, qkv_bias=True, use_rel_pos=True, window_size=4,
            global_attn_indexes=[depth - 1], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(emb, emb),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def _images_and_boxes(seed: int = 0, min_size: float = 4.0):
    """A landscape and a portrait image (neither square: SAM pads them), boxes anywhere,
    fractional, overlapping, one touching the far corner."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((50, 90), (83, 41)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        xy = rng.uniform(0, [w - min_size, h - min_size], (9, 2))
        wh = rng.uniform(min_size, [w / 1.5, h / 1.5], (9, 2))
        boxes = np.c_[xy, np.minimum(xy + wh, [w, h])]
        boxes = np.vstack([boxes, [w - 10.5, h - 12.25, w, h]])
        out.append((img, boxes))
    return out


def _echo_box_model(img_size: int = 64) -> tuple[Sam, list]:
    """A tiny SAM whose prompt encoder passes the (model-frame) boxes through and whose mask
    decoder answers each box with its own box in the low-res frame (a signed distance, so the
    official upsampling puts the edge where the box is). Multimask: the box, the box shrunk by
    a third of its size, nothing; predicted IoUs 0.3, 1.4, -0.2 (out of range on purpose)."""
    model = tiny_sam(img_size)
    seen: list = []

    def prompt_forward(points, boxes, masks):
        seen.append(boxes.clone())
        return boxes.reshape(-1, 2, 2), torch.zeros(len(boxes), 1)

    def decoder_forward(image_embeddings, image_pe, sparse_prompt_embeddings,
                        dense_prompt_embeddings, multimask_output):
        boxes = sparse_prompt_embeddings.reshape(-1, 4)
        low = img_size // 4
        centres = (torch.arange(low, dtype=torch.float32) + 0.5) * (img_size / low)
        x, y = centres[None, None, :], centres[None, :, None]

        def dist(b):
            x1, y1, x2, y2 = (b[:, i, None, None] for i in range(4))
            return torch.minimum(torch.minimum(x - x1, x2 - x), torch.minimum(y - y1, y2 - y))

        box = dist(boxes)
        if not multimask_output:
            return box[:, None], torch.full((len(boxes), 1), 0.3)
        wh = boxes[:, 2:] - boxes[:, :2]
        shrunk = dist(torch.cat([boxes[:, :2] + wh / 3, boxes[:, 2:] - wh / 3], 1))
        masks = torch.stack([box, shrunk, torch.full_like(box, -5.0)], 1)
        return masks, torch.tensor([[0.3, 1.4, -0.2]]).repeat(len(boxes), 1)

    model.prompt_encoder.forward = prompt_forward
    model.prompt_encoder.get_dense_pe = lambda: torch.zeros(1)
    model.mask_decoder.forward = decoder_forward
    return model, seen


@pytest.mark.parametrize("multimask", [False, True])
def test_box_prompts_are_in_the_image_frame_and_masks_come_back_to_it(multimask):
    """SAM sees each box in its resized, padded frame, and its mask comes back onto the
    image's pixels of that box: with the echo model, every mask is its own box again."""
    model, seen = _echo_box_model(128)  # low-res masks 32 x 32: boxes of >= 15 pixels
    src = SamSource(model, batch=4, multimask=multimask)
    data = _images_and_boxes(min_size=15)
    answers = src.masks([d[0] for d in data], [d[1] for d in data])
    assert len(answers) == 2
    errors = []
    for (img, boxes), ans in zip(data, answers):
        h, w = img.shape[:2]
        assert len(ans.masks) == len(boxes) == len(ans.quality)
        for b, m in zip(boxes, ans.masks):
            c0, r0, c1, r1 = snap_box(b, h, w)
            assert (m.c0, m.r0, m.mask.shape) == (c0, r0, (r1 - r0, c1 - c0))
            want = b
            if multimask:  # the best by predicted IoU: the shrunk box
                wh = b[2:] - b[:2]
                want = np.r_[b[:2] + wh / 3, b[2:] - wh / 3]
            # the mask's extent is the box's, to a pixel (SAM's low-res masks are 32 x 32)
            err = np.abs(np.subtract(m.tight_box(), snap_box(want, h, w)))
            errors.append(err.max())
            assert err.max() <= 1, (b, m.tight_box(), snap_box(want, h, w))
        assert ans.quality == [1.0 if multimask else pytest.approx(0.3)] * len(boxes)
    # the prompts SAM received: the official ResizeLongestSide of each image's boxes
    scale = [128 / max(img.shape[:2]) for img, _ in data]
    got = torch.cat(seen).numpy()
    want = np.concatenate([b * s for (_, b), s in zip(data, scale)])
    # (ResizeLongestSide rounds the resized sides: up to half a model pixel per coordinate)
    np.testing.assert_allclose(got, want, rtol=0, atol=0.51)


def test_masks_are_the_official_predictors_pasted_to_their_boxes_and_images():
    """Each mask is what the official SamPredictor.predict gives for that box alone on that
    image, confined to the box: BoxMask.from_full(mask & box_mask, box)."""
    model = tiny_sam()
    data = _images_and_boxes(1)
    answers = SamSource(model, batch=64).masks([d[0] for d in data], [d[1] for d in data])
    ref = SamPredictor(model)
    nonempty = 0
    for (img, boxes), ans in zip(data, answers):
        h, w = img.shape[:2]
        ref.set_image(img)
        for b, m, q in zip(boxes, ans.masks, ans.quality):
            masks, ious, _ = ref.predict(box=b, multimask_output=False)
            want = BoxMask.from_full(masks[0] & box_to_mask(b, h, w), b)
            assert (m.c0, m.r0) == (want.c0, want.r0)
            assert np.array_equal(m.mask, want.mask)
            assert 0.0 <= q <= 1.0
            assert q == pytest.approx(min(max(float(ious[0]), 0.0), 1.0), abs=1e-5)
            nonempty += m.area > 0
    assert nonempty > 0  # a random SAM still answers something


def test_batching_equals_one_box_at_a_time():
    model = tiny_sam(seed=3)
    data = _images_and_boxes(2)
    runs = [SamSource(model, batch=b, multimask=mm).masks([d[0] for d in data],
                                                          [d[1] for d in data])
            for mm in (False, True) for b in (1, 3, 64)]
    for group in (runs[:3], runs[3:]):
        for other in group[1:]:
            for a, b in zip(group[0], other):
                assert [(m.c0, m.r0) for m in a.masks] == [(m.c0, m.r0) for m in b.masks]
                assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks))
                # float32 decoder sums differ by ~1e-7 between batch sizes
                np.testing.assert_allclose(a.quality, b.quality, atol=1e-5)
                assert all(0.0 <= q <= 1.0 for q in a.quality)


def test_an_image_without_boxes_and_settings():
    src = SamSource(tiny_sam(), model_type="vit_b", checkpoint="sha256:abc")
    (ans,) = src.masks([np.zeros((20, 30, 3), np.uint8)], [np.zeros((0, 4))])
    assert ans.masks == [] and ans.quality == [] and ans.fallbacks == 0
    assert src.settings() == {"sam_model": "vit_b", "sam_checkpoint": "sha256:abc"}
    assert src.name == "sam"


# ------------------------------------------------------------------------------- the loader


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path):
    """``vit_b`` builds a tiny SAM, ``vit_l`` another tiny one (wider, deeper); a saved
    ``vit_b`` checkpoint."""
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam())
    monkeypatch.setitem(sa.sam_model_registry, "vit_l",
                        lambda checkpoint=None: tiny_sam(dim=48, depth=3))
    ckpt = tmp_path / "tiny_vit_b.pth"
    torch.save(tiny_sam(seed=5).state_dict(), ckpt)
    return ckpt


def test_load_sam_loads_the_checkpoint_and_fingerprints_it(tiny_registry):
    from boxcaseg.runlock import file_fingerprint

    model = load_sam(tiny_registry, "vit_b", "cpu")
    want = tiny_sam(seed=5).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert not model.training
    src = SamSource.from_checkpoint(tiny_registry, "vit_b", "cpu", batch=8)
    assert src.settings() == {"sam_model": "vit_b",
                              "sam_checkpoint": file_fingerprint(tiny_registry)}


def test_loader_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r'segment-anything .*pip install -e "\.\[sam\]"'):
        load_sam(tmp_path / "x.pth")


def test_loader_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pth: SAM checkpoint not found"):
        load_sam(tmp_path / "nope.pth", "vit_b")


def test_loader_names_a_checkpoint_of_another_model_type(tiny_registry):
    with pytest.raises(ConfigError) as e:
        load_sam(tiny_registry, "vit_l")
    msg = str(e.value)
    assert "\n" not in msg
    assert "does not fit vit_l:" in msg and "pass the matching --sam-model" in msg
    # vit_l (depth 3) has one block more: its keys are missing; the shared ones are narrower
    assert "missing, 0 unexpected and" in msg and "mis-shaped keys" in msg
    assert "(first: missing image_encoder.blocks.2." in msg


def test_loader_says_which_official_type_a_checkpoint_is(tmp_path):
    """The official encoders' widths name the type (the real vit_l is built on the meta
    device: no weights are initialised)."""
    ckpt = tmp_path / "looks_like_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1)}, ckpt)
    with pytest.raises(ConfigError, match=r"its image encoder is vit_b's \(768 wide\): pass "
                                          r"--sam-model vit_b"):
        load_sam(ckpt, "vit_l")
    other = tmp_path / "boxcaseg.pt"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(2)}, "step": 3}, other)
    with pytest.raises(ConfigError, match="no SAM image encoder: is it a SAM checkpoint"):
        load_sam(other, "vit_b")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="garbage.pth: cannot read it as a PyTorch checkpoint"):
        load_sam(garbage, "vit_b")


# ------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from boxcaseg.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=2, n_salient=2, n_train=3,
                          n_val=1, image_size=96, salient_size=64, progress=False)


def _cli(argv):
    from boxcaseg.cli import main
    return main([str(a) for a in argv])


def test_cli_labels_with_sam_to_a_valid_coco_file(tiny_registry, demo, tmp_path, capsys):
    from pycocotools.coco import COCO

    out = tmp_path / "sam.json"
    rc = _cli(["label", "--method", "sam", "--sam-checkpoint", tiny_registry,
               "--sam-model", "vit_b", "--images", demo["images"], "--boxes", demo["train"],
               "--out", out, "--no-progress", "sam_batch=2", "device=cpu"])
    assert rc == 0, capsys.readouterr().err
    coco = COCO(str(out))
    data = json.loads(out.read_text())
    boxes = json.loads(demo["train"].read_text())
    assert len(data["annotations"]) == len(boxes["annotations"]) > 0
    for a in data["annotations"]:
        assert a["mask_source"] == "sam" and 0.0 <= a["score"] <= 1.0
        im = coco.imgs[a["image_id"]]
        m = coco.annToMask(a).astype(bool)
        assert m.shape == (im["height"], im["width"])
        x, y, w, h = a["bbox"]
        assert not (m & ~box_to_mask([x, y, x + w, y + h], m.shape[0], m.shape[1])).any()
        assert m.sum() == a["area"]
    assert data["boxcaseg_label"]["config"]["sam_model"] == "vit_b"
    assert data["boxcaseg_label"]["config"]["sam_batch"] == 2
    # the score is SAM's predicted IoU x merge x sqrt(proxy IoU): per mask, <= the proxy part
    for a in data["annotations"]:
        assert a["score"] <= np.sqrt(a["proxy_iou"]) + 1e-6
    # the same masks as SamSource gives directly (the CLI pastes them to the right boxes)
    from boxcaseg.io import read_image_rgb

    src = SamSource.from_checkpoint(tiny_registry, "vit_b", "cpu")
    by_image: dict = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in by_image.items():
        im = coco.imgs[image_id]
        img = read_image_rgb(demo["images"] / im["file_name"])
        boxes_xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        (raw,) = src.masks([img], [boxes_xyxy])
        for a, m in zip(anns, raw.masks):
            # merge only removes pixels; with no overlap it keeps the mask as SAM gave it
            got = rle_to_mask(a["segmentation"])
            assert not (got & ~m.to_full(*got.shape)).any()


def test_cli_errors_are_one_line(tiny_registry, demo, tmp_path, capsys, monkeypatch):
    common = ["label", "--method", "sam", "--images", demo["images"], "--boxes",
              demo["train"], "--out", tmp_path / "o.json", "--no-progress"]
    assert _cli(common) != 0
    assert "--method sam needs --sam-checkpoint" in capsys.readouterr().err
    assert _cli([*common, "--sam-checkpoint", tmp_path / "missing.pth"]) != 0
    err = capsys.readouterr().err
    assert "missing.pth: SAM checkpoint not found" in err and "Traceback" not in err
    assert _cli([*common, "--sam-checkpoint", tiny_registry, "--sam-model", "vit_l"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not fit vit_l" in err and "Traceback" not in err and "\n" not in err
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    assert _cli([*common, "--sam-checkpoint", tiny_registry]) != 0
    err = capsys.readouterr().err.strip()
    assert 'pip install -e ".[sam]"' in err and "\n" not in err
    assert not (tmp_path / "o.json").exists()
