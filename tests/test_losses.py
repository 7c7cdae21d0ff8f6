"""Losses of paper Eq. 1-4 against brute-force loop references written from the definitions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from boxcaseg.losses import boxcaseg_loss, mil_loss, pixel_loss, smoothness_term


# ------------------------------------------------------------------ brute-force references
def _bce(p: torch.Tensor, y: float) -> torch.Tensor:
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def mil_reference(logits: torch.Tensor, boxes, smooth_weight: float) -> torch.Tensor:
    """Loops over images, rows, columns, pixels and their 8 neighbours (paper Eq. 1-2 with the
    authors' mean normalisation)."""
    n, _, h, w = logits.shape
    s = torch.sigmoid(logits)
    bag_losses, pair_terms = [], []
    for k in range(n):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        for i in range(h):
            score = torch.stack([s[k, 0, i, j] for j in range(w)]).max()
            label = 1.0 if y1 <= i + 0.5 < y2 else 0.0
            bag_losses.append(_bce(score, label))
        for j in range(w):
            score = torch.stack([s[k, 0, i, j] for i in range(h)]).max()
            label = 1.0 if x1 <= j + 0.5 < x2 else 0.0
            bag_losses.append(_bce(score, label))
        for i in range(h):
            for j in range(w):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if (di, dj) == (0, 0):
                            continue
                        ii, jj = i + di, j + dj
                        if 0 <= ii < h and 0 <= jj < w:
                            pair_terms.append((s[k, 0, i, j] - s[k, 0, ii, jj]) ** 2)
    assert len(bag_losses) == n * (h + w)
    unary = torch.stack(bag_losses).mean()
    smooth = torch.stack(pair_terms).mean() if pair_terms else torch.zeros((), dtype=s.dtype)
    return unary + smooth_weight * smooth


BOXES = [
    [2.0, 1.0, 6.0, 5.0],  # integer box
    [0.0, 0.0, 9.0, 7.0],  # covers the whole 7x9 map
    [1.3, 2.49, 4.51, 6.5],  # fractional: centre 2.5 excluded? y1=2.49 <= 2.5 -> row 2 inside
    [-3.0, 4.2, 2.0, 12.0],  # crosses the top-left/bottom border
    [5.0, 3.0, 5.4, 3.4],  # degenerate: covers no pixel centre -> all bags negative
    [8.4, 6.4, 20.0, 20.0],  # only the last row/column (centres 6.5 / 8.5)
]


@pytest.mark.parametrize("smooth_weight", [0.05, 0.0, 1.0])
def test_mil_loss_matches_loop_reference_values_and_gradients(smooth_weight):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(len(BOXES), 1, 7, 9, generator=g, dtype=torch.float64)
              ).requires_grad_()
    boxes = torch.tensor(BOXES, dtype=torch.float64)
    got = mil_loss(logits, boxes, smooth_weight)
    ref = mil_reference(logits, boxes, smooth_weight)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12), (got.item(), ref.item())
    (g_got,) = torch.autograd.grad(got, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_got, g_ref, rtol=1e-10, atol=1e-13)


def test_mil_bag_labels_by_hand():
    # with smooth_weight=0 and one hot pixel per map the loss is a known closed form
    logits = torch.full((1, 1, 4, 4), -30.0, dtype=torch.float64)
    logits[0, 0, 1, 2] = 30.0
    # box covering exactly row 1 and column 2 -> every bag's label equals its max: loss ~ 0
    perfect = mil_loss(logits, torch.tensor([[2.0, 1.0, 3.0, 2.0]], dtype=torch.float64), 0.0)
    assert perfect.item() < 1e-12
    # box covering rows 1-2: row 2's bag is positive but its max is sigmoid(-30) -> 30 / 8 bags
    wrong = mil_loss(logits, torch.tensor([[2.0, 1.0, 3.0, 3.0]], dtype=torch.float64), 0.0)
    assert wrong.item() == pytest.approx(30.0 / 8, rel=1e-9)
    # the bag is the whole row (paper Fig. 3): a hot pixel outside the box columns still counts
    wrong_col = mil_loss(logits, torch.tensor([[0.0, 1.0, 1.0, 2.0]], dtype=torch.float64), 0.0)
    # row 1 positive (max is the hot pixel at column 2: ok), column 0 positive (max -30: 30),
    # column 2 negative but hot (30): 60 / 8
    assert wrong_col.item() == pytest.approx(60.0 / 8, rel=1e-9)


def test_mil_loss_is_stable_and_batched():
    logits = torch.tensor([[[[200.0, -200.0], [-200.0, 200.0]]]]).repeat(3, 1, 1, 1)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    loss = mil_loss(logits.requires_grad_(), boxes)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # per-image losses average to the batch loss (mean over bags of equal-size maps)
    per = torch.stack([mil_loss(logits[i:i + 1], boxes[i:i + 1]) for i in range(3)])
    assert torch.allclose(per.mean(), loss)
    assert mil_loss(torch.zeros(0, 1, 4, 4), torch.zeros(0, 4)).item() == 0.0


def test_smoothness_term_on_a_step_edge():
    # one vertical step of height 1 in sigmoid space between columns 1 and 2 of a 3x4 map
    logits = torch.full((1, 1, 3, 4), -1e3, dtype=torch.float64)
    logits[..., 2:] = 1e3
    # ordered pairs inside: 2 * (3*3 right + 2*4 down + 2*2*3 diagonals) = 58; crossing the
    # edge: horizontal 3 rows, diagonals 2+2 -> 7 unordered, 14 ordered
    assert smoothness_term(logits).item() == pytest.approx(14 / 58, rel=1e-12)
    assert smoothness_term(torch.zeros(2, 1, 1, 1)).item() == 0.0


# ---------------------------------------------------------------------- pixel loss (Eq. 3)
def pixel_naive(a, t, m, alpha):
    p = alpha * torch.sigmoid(a) + (1 - alpha) * torch.sigmoid(t)
    return -(m * torch.log(p) + (1 - m) * torch.log(1 - p)).mean()


@pytest.mark.parametrize("alpha", [0.7, 0.3, 0.5, 0.999])
def test_pixel_loss_matches_naive_formula(alpha):
    g = torch.Generator().manual_seed(1)
    a = (4 * torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    t = (4 * torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    m = (torch.rand(2, 1, 5, 6, generator=g) > 0.5).double()
    got, ref = pixel_loss(a, t, m, alpha), pixel_naive(a, t, m, alpha)
    assert torch.allclose(got, ref, rtol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (a, t)), torch.autograd.grad(ref, (a, t))):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-14)


def test_pixel_loss_finite_for_huge_logits_where_naive_fails():
    a = torch.tensor([[[[80.0, -80.0, 80.0, -80.0]]]], requires_grad=True)
    t = torch.tensor([[[[80.0, -80.0, -80.0, 80.0]]]], requires_grad=True)
    m = torch.tensor([[[[0.0, 1.0, 1.0, 0.0]]]])
    naive = pixel_naive(a, t, m, 0.7)
    assert not torch.isfinite(naive)  # log(1 - 1) = -inf in float32
    got = pixel_loss(a, t, m, 0.7)
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(a.grad).all() and torch.isfinite(t.grad).all()
    # pixel 0: p = 1 - ~0 vs mask 0 -> -log(~sigmoid(-80)) = 80; pixel 1 likewise;
    # pixel 2: p = 0.7 vs mask 1 -> -log(0.7); pixel 3: 1 - p = 0.7 -> -log(0.7)
    assert got.item() == pytest.approx((80 + 80 - 2 * math.log(0.7)) / 4, rel=1e-5)


def test_pixel_loss_alpha_edges_are_single_head_bce():
    g = torch.Generator().manual_seed(2)
    a, t = torch.randn(2, 1, 4, 4, generator=g) * 50, torch.randn(2, 1, 4, 4, generator=g) * 50
    m = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    assert torch.equal(pixel_loss(a, t, m, 1.0), F.binary_cross_entropy_with_logits(a, m))
    assert torch.equal(pixel_loss(a, t, m, 0.0), F.binary_cross_entropy_with_logits(t, m))
    # and, for moderate logits, the general branch converges to them (continuity at the edges;
    # with huge logits a 1e-9 share of the other head legitimately caps the loss at ~20.7)
    a, t = a / 20, t / 20
    assert torch.allclose(pixel_loss(a, t, m, 1 - 1e-7), pixel_loss(a, t, m, 1.0), atol=1e-4)
    assert torch.allclose(pixel_loss(a, t, m, 1e-7), pixel_loss(a, t, m, 0.0), atol=1e-4)


def test_gradcheck_small_inputs():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    m = (torch.rand(1, 1, 3, 4, generator=g) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x, y: pixel_loss(x, y, m, 0.7), (a, t))
    boxes = torch.tensor([[0.6, 1.2, 3.1, 2.7]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: mil_loss(x, boxes, 0.5), (a,))


# ------------------------------------------------------------------------ Eq. 4 on a batch
def _batch(n_box: int, n_sal: int, size: int = 8, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    n = n_box + n_sal
    outputs = {k: torch.randn(n, 1, size, size, generator=g, requires_grad=True)
               for k in ("weak", "salient", "transferred")}
    boxes = torch.tensor([[1.0, 2.0, 6.0, 7.5]] * n)
    boxes[:, 0] += torch.arange(n) * 0.3
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
    masks[:n_box] = 0
    sal = torch.tensor([False] * n_box + [True] * n_sal)
    return outputs, {"box": boxes, "mask": masks, "is_salient": sal}


def test_boxcaseg_loss_combines_groups_as_documented():
    outputs, batch = _batch(3, 2)
    cfg = SimpleNamespace(alpha=0.7, smooth_weight=0.05)
    out = boxcaseg_loss(outputs, batch, cfg)
    sal = batch["is_salient"]
    w, b = outputs["weak"], batch["box"]
    assert torch.allclose(out["mil_weak_box"], mil_loss(w[~sal], b[~sal]))
    assert torch.allclose(out["mil_weak_salient"], mil_loss(w[sal], b[sal]))
    pix = pixel_loss(outputs["salient"][sal], outputs["transferred"][sal], batch["mask"][sal], 0.7)
    assert torch.allclose(out["pixel"], pix)
    # MIL over all images of the batch + pixel over salient pixels
    assert torch.allclose(out["total"], mil_loss(w, b) + pix, atol=1e-6)
    out["total"].backward()
    # box images give the pixel heads no gradient; salient images do
    assert outputs["salient"].grad[~sal].abs().max() == 0
    assert outputs["salient"].grad[sal].abs().max() > 0


def test_boxcaseg_loss_without_salient_images_or_pixel_heads():
    outputs, batch = _batch(4, 0)
    out = boxcaseg_loss(outputs, batch, SimpleNamespace(alpha=0.7))
    assert out["pixel"].item() == 0 and out["mil_weak_salient"].item() == 0
    assert torch.allclose(out["total"], mil_loss(outputs["weak"], batch["box"]))
    out["total"].backward()  # unused heads still get a (zero) gradient: DDP-safe
    assert outputs["transferred"].grad is not None
    assert outputs["transferred"].grad.abs().max() == 0
    # weak-only ablation on a mixed batch: MIL only
    outputs, batch = _batch(2, 2)
    weak_only = {"weak": outputs["weak"]}
    out = boxcaseg_loss(weak_only, batch, SimpleNamespace(alpha=0.7))
    assert torch.allclose(out["total"], mil_loss(outputs["weak"], batch["box"]))
    # salient head alone: plain BCE of that head on salient images
    sal = batch["is_salient"]
    out = boxcaseg_loss({"weak": outputs["weak"], "salient": outputs["salient"]}, batch,
                        SimpleNamespace(alpha=0.7))
    bce = F.binary_cross_entropy_with_logits(outputs["salient"][sal], batch["mask"][sal])
    assert torch.allclose(out["pixel"], bce)


# ---------------------------------------------------------------------------- pairwise term


def _two_tone(n=2, size=32):
    """Left half red, right half blue; box covering everything."""
    img = torch.zeros(n, 3, size, size)
    img[:, 0, :, : size // 2] = 220
    img[:, 2, :, size // 2:] = 220
    boxes = torch.tensor([[0.0, 0.0, size, size]] * n)
    return img, boxes


def test_pairwise_loss_rewards_labels_that_follow_colour_edges():
    from boxcaseg.losses import pairwise_color_loss
    img, boxes = _two_tone()
    follow = torch.full((2, 1, 32, 32), -6.0)
    follow[..., :16] = 6.0                      # foreground exactly on the red half
    across = torch.full((2, 1, 32, 32), -6.0)
    across[..., :8, :] = 6.0                    # a label edge cutting through both colours
    undecided = torch.zeros(2, 1, 32, 32)
    lf, la, lu = (pairwise_color_loss(x, img, boxes) for x in (follow, across, undecided))
    assert lf < 0.01 < la and lu == pytest.approx(math.log(2), rel=1e-4)


def test_pairwise_loss_ignores_pairs_outside_the_box_and_across_colours():
    from boxcaseg.losses import pairwise_color_loss
    img, _ = _two_tone(1)
    noisy = torch.randn(1, 1, 32, 32) * 5
    empty = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert pairwise_color_loss(noisy, img, empty) == 0  # no pair inside an empty box
    # labels that disagree only across the colour edge cost nothing
    split = torch.full((1, 1, 32, 32), -8.0)
    split[..., :16] = 8.0
    assert pairwise_color_loss(split, img, torch.tensor([[0.0, 0.0, 32, 32]])) < 1e-3


def test_pairwise_weight_zero_leaves_the_loss_unchanged_and_positive_adds_the_term():
    from types import SimpleNamespace

    from boxcaseg.losses import boxcaseg_loss
    torch.manual_seed(0)
    img, boxes = _two_tone(3)
    outputs = {k: torch.randn(3, 1, 32, 32) for k in ("weak", "salient", "transferred")}
    batch = {"image": img, "box": boxes, "is_salient": torch.tensor([False, False, True]),
             "mask": torch.zeros(3, 1, 32, 32)}
    off = boxcaseg_loss(outputs, batch, SimpleNamespace(alpha=0.7, smooth_weight=0.05))
    zero = boxcaseg_loss(outputs, batch, SimpleNamespace(alpha=0.7, smooth_weight=0.05,
                                                         pairwise_weight=0.0))
    on = boxcaseg_loss(outputs, batch, SimpleNamespace(alpha=0.7, smooth_weight=0.05,
                                                       pairwise_weight=0.5))
    assert list(off) == list(zero) == ["mil_weak_box", "mil_weak_salient", "pixel", "total"]
    assert torch.equal(off["total"], zero["total"])
    assert on["pairwise"] > 0
    assert torch.allclose(on["total"], off["total"] + 0.5 * on["pairwise"])
