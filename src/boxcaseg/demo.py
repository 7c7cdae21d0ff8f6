"""The whole paper on the embedded synthetic data, one command, one table.

Stages (each records what it was run with in ``OUT/stages/<stage>.json`` when it finishes, so
a re-run with the same settings skips it; a BoxCaseg training interrupted half-way resumes
from its ``last.pt``):

1. synthetic data (salient set + box-supervised set with hidden GT masks)
2. BoxCaseg with all three heads, and the weak-head-only ablation (BBTP-style MIL)
3. proxy masks for the training boxes: box / GrabCut / BoxCaseg-weak / BoxCaseg, each scored
   against the hidden GT masks (mIoU*, IoU@50, IoU@75) and timed
4. Proxy Mask R-CNN trained on BoxCaseg's proxy masks and on the GT masks (the oracle),
   evaluated on the validation images (COCO mask AP); with ``all_maskrcnn`` also on the
   filled-box and GrabCut masks. The demo's schedule (75 iterations) is far from converged and
   its rows differ by about as much as two seeds of one row do, so by default it trains only
   the two that show the pipeline end to end and keeps the demo within 15 minutes on 2
   cores; ``bench/maskrcnn_sources.py`` compares all four on a longer schedule.
5. ``OUT/results.json``, the printed table, overlay PNGs in ``OUT/overlays/`` and the HTML
   report of the proxy masks in ``OUT/report/index.html``
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.config import load_config, packaged_config, to_dict
from boxcaseg.io import atomic_write, atomic_write_json, read_image_rgb, read_json

log = logging.getLogger(__name__)

LABEL_METHODS = ("box", "grabcut", "boxcaseg_weak", "boxcaseg")
MASKRCNN_SOURCES = ("box", "grabcut", "boxcaseg", "gt")  # all_maskrcnn
MASKRCNN_DEFAULT = ("boxcaseg", "gt")
RESULTS_VERSION = 1


@dataclass(frozen=True)
class DemoSize:
    """Everything that scales the demo's run time (2 CPU cores: see README)."""

    n_salient: int
    n_train: int
    n_val: int
    image_size: int
    salient_size: int
    boxcaseg_steps: int
    weak_steps: int
    train_crop: int  # BoxCaseg training crop (the packaged config's for the full demo)
    salient_resize: int
    label_crop: int
    maskrcnn_iters: int
    maskrcnn_steps: tuple[int, ...]
    maskrcnn_warmup: int
    maskrcnn_size: int  # Mask R-CNN min_size = max_size
    overlays: int


FULL = DemoSize(n_salient=300, n_train=120, n_val=40, image_size=256, salient_size=224,
                boxcaseg_steps=240, weak_steps=160, train_crop=160, salient_resize=176,
                label_crop=160, maskrcnn_iters=75, maskrcnn_steps=(60,), maskrcnn_warmup=15,
                maskrcnn_size=256, overlays=6)
QUICK = DemoSize(n_salient=32, n_train=12, n_val=6, image_size=128, salient_size=96,
                 boxcaseg_steps=6, weak_steps=4, train_crop=64, salient_resize=72,
                 label_crop=96, maskrcnn_iters=4, maskrcnn_steps=(3,), maskrcnn_warmup=1,
                 maskrcnn_size=128, overlays=2)


class _Stages:
    """Skip a stage whose record matches the settings it would run with now."""

    def __init__(self, root: Path, fresh: bool):
        self.dir = root / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for f in self.dir.glob("*.json"):
                f.unlink()

    def done(self, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        rec = read_json(path)
        if rec.get("settings") != json.loads(json.dumps(settings)):
            log.info("stage %s: settings changed since the last run, redoing it", name)
            path.unlink()
            return None
        print(f"  {name}: done in an earlier run, reused ({path})", flush=True)
        return rec["result"]

    def finish(self, name: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        atomic_write_json(self.dir / f"{name}.json", {"settings": settings, "result": result},
                          indent=2)


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def boxcaseg_train_config(data: dict[str, Path], out_dir: Path, size: DemoSize, steps: int,
                          heads: list[str], seed: int) -> Any:
    """The packaged CPU BoxCaseg config pointed at demo data (``make_demo_data``'s paths)."""
    from boxcaseg.engine.config import TrainConfig

    return load_config(TrainConfig, packaged_config("boxcaseg_demo_cpu.yaml"), [
        f"salient_root={data['salient']}", f"boxes_json={data['train']}",
        f"images_root={data['images']}", f"out_dir={out_dir}", f"max_steps={steps}",
        f"seed={seed}", f"model.heads={json.dumps(heads)}", f"crop_size={size.train_crop}",
        f"salient_resize={size.salient_resize}"])


def _train_boxcaseg(name: str, data: dict[str, Path], out: Path, size: DemoSize, steps: int,
                    heads: list[str], seed: int, stages: _Stages, fresh: bool,
                    progress: bool) -> Path:
    from boxcaseg.engine.trainer import train

    run_dir = out / name
    cfg = boxcaseg_train_config(data, run_dir, size, steps, heads, seed)
    settings = to_dict(cfg)
    if stages.done(name, settings) is not None and (run_dir / "final.pt").is_file():
        return run_dir / "final.pt"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "final.pt").is_file() or ((run_dir / "last.pt").is_file()
                                            and not _same_config(run_dir, cfg)):
        shutil.rmtree(run_dir)  # finished or begun with other settings: start clean
    resume = (run_dir / "last.pt").is_file()
    if resume:
        print(f"  resuming {name} from {run_dir / 'last.pt'}", flush=True)
    t0 = time.perf_counter()
    final = train(cfg, resume=resume, progress=progress)
    stages.finish(name, settings, {"checkpoint": str(final),
                                   "seconds": time.perf_counter() - t0})
    return final


def _same_config(run_dir: Path, cfg: Any) -> bool:
    import yaml

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:
        return yaml.safe_load(saved.read_text()) == json.loads(json.dumps(to_dict(cfg)))
    except Exception:  # unreadable record of an old run: not the same
        return False


def _label(method: str, data: dict[str, Path], out: Path, size: DemoSize,
           checkpoints: dict[str, Path], stages: _Stages, progress: bool) -> dict[str, Any]:
    from boxcaseg.data.coco import load_coco
    from boxcaseg.evaluation.instance_iou import mask_quality
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.run import label_dataset

    cfg = LabelConfig(crop_size=size.label_crop, device="cpu")
    out_json = out / "labels" / f"{method}.json"
    settings = {"method": method, "label": to_dict(cfg),
                "checkpoint": str(checkpoints.get(method, ""))}
    rec = stages.done(f"label_{method}", settings)
    if rec is not None and out_json.is_file():
        return rec
    model = None
    if method in checkpoints:
        from boxcaseg.model.boxcaseg import load_boxcaseg
        model, _ = load_boxcaseg(checkpoints[method], map_location="cpu")
    coco = load_coco(data["train"], data["images"])
    summary = label_dataset(coco, out_json, "boxcaseg" if model is not None else method,
                            cfg, model=model, progress=progress)
    gt, labels = read_json(data["train_gt"]), read_json(out_json)
    quality = mask_quality(gt, labels)
    kept = mask_quality(gt, labels, only_kept=True)
    rec = {"miou_star": quality["miou_star"], "iou50": quality["iou50"],
           "iou75": quality["iou75"], "instances_per_s": summary.instances_per_s,
           "instances": summary.instances_labeled, "drop_rate": summary.drop_rate,
           "miou_star_kept": kept["miou_star"], "by_size": quality["by_size"],
           "labels": str(out_json)}
    print(f"  {method}: mIoU* {_pct(rec['miou_star'])}  IoU@50 {_pct(rec['iou50'])}  "
          f"IoU@75 {_pct(rec['iou75'])}  {rec['instances_per_s']:.1f} inst/s  "
          f"drop {100 * rec['drop_rate']:.1f}%", flush=True)
    stages.finish(f"label_{method}", settings, rec)
    return rec


def _maskrcnn(source: str, train_json: Path, data: dict[str, Path], out: Path, size: DemoSize,
              seed: int, stages: _Stages, progress: bool) -> dict[str, Any]:
    from boxcaseg.maskrcnn.config import MaskRCNNConfig
    from boxcaseg.maskrcnn.train import train_maskrcnn

    run_dir = out / "maskrcnn" / source
    overrides = [f"train_json={train_json}", f"images_root={data['images']}",
                 f"val_json={data['val_gt']}", f"val_images_root={data['images']}",
                 f"out_dir={run_dir}", f"max_iters={size.maskrcnn_iters}",
                 f"steps={json.dumps(list(size.maskrcnn_steps))}",
                 f"warmup_iters={size.maskrcnn_warmup}", f"seed={seed}", "device=cpu",
                 f"checkpoint_every={10 ** 6}", f"min_size={size.maskrcnn_size}",
                 f"max_size={size.maskrcnn_size}"]
    cfg = load_config(MaskRCNNConfig, packaged_config("maskrcnn_demo_cpu.yaml"), overrides)
    settings = to_dict(cfg)
    rec = stages.done(f"maskrcnn_{source}", settings)
    if rec is not None:
        return rec
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    result = train_maskrcnn(cfg, progress=progress)
    Path(result["last"]).unlink(missing_ok=True)  # optimizer state: 2x the model, not needed
    segm = result["metrics"]["segm"]
    rec = {"AP": segm["AP"], "AP50": segm["AP50"], "AP75": segm["AP75"],
           "voc": result["metrics"].get("voc"), "checkpoint": result["checkpoint"],
           "seconds": time.perf_counter() - t0}
    print(f"  trained on {source}: mask AP {_pct(rec['AP'])}  AP50 {_pct(rec['AP50'])}  "
          f"AP75 {_pct(rec['AP75'])}", flush=True)
    stages.finish(f"maskrcnn_{source}", settings, rec)
    return rec


def _pct(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:5.1f}"


def format_results(results: dict[str, Any]) -> str:
    """The demo's table: box->mask quality of each labeler, then mask AP of each Mask R-CNN."""
    names = {"box": "box (filled)", "grabcut": "GrabCut", "boxcaseg_weak":
             "BoxCaseg, weak head only", "boxcaseg": "BoxCaseg", "gt": "ground truth (oracle)"}
    lines = ["proxy masks of the training boxes vs hidden GT masks (percent; 'dropped': flagged "
             "ignore_mask by the proxy box agreement)",
             f"  {'method':<26}{'mIoU*':>7}{'IoU@50':>8}{'IoU@75':>8}{'inst/s':>9}"
             f"{'dropped':>9}{'mIoU* kept':>12}"]
    for m, r in results["proxy_masks"].items():
        lines.append(f"  {names.get(m, m):<26}{_pct(r['miou_star']):>7}{_pct(r['iou50']):>8}"
                     f"{_pct(r['iou75']):>8}{r['instances_per_s']:>9.1f}"
                     f"{_pct(r.get('drop_rate')):>9}{_pct(r.get('miou_star_kept')):>12}")
    lines += ["", "Mask R-CNN on the validation images, trained on",
              f"  {'masks':<26}{'AP':>7}{'AP50':>8}{'AP75':>8}"]
    for m, r in results["maskrcnn"].items():
        lines.append(f"  {names.get(m, m):<26}{_pct(r['AP']):>7}{_pct(r['AP50']):>8}"
                     f"{_pct(r['AP75']):>8}")
    lines.append(f"\ntotal {results['seconds']:.0f} s")
    return "\n".join(lines)


def _overlays(data: dict[str, Path], out: Path, labels: dict[str, str],
              maskrcnn_ckpt: str | None, n: int) -> list[str]:
    """Side-by-side PNGs: GT | box | GrabCut | BoxCaseg proxy masks on training images, and the
    BoxCaseg-trained Mask R-CNN's detections on validation images."""
    import cv2
    from PIL import Image

    from boxcaseg.maskrcnn.visualize import draw_instances

    out_dir = out / "overlays"
    out_dir.mkdir(parents=True, exist_ok=True)
    gt = read_json(data["train_gt"])
    preds = {m: read_json(p) for m, p in labels.items()}
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    written: list[str] = []

    def anns_of(coco: dict[str, Any], image_id: int) -> list[dict[str, Any]]:
        return [{**a, "score": 1.0} for a in coco["annotations"]
                if a["image_id"] == image_id and "segmentation" in a]

    def save(path: Path, panels: list[np.ndarray], titles: list[str]) -> None:
        tiles = []
        for p, t in zip(panels, titles):
            p = p.copy()
            cv2.putText(p, t, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(p)
        strip = Image.fromarray(np.concatenate(tiles, axis=1))
        atomic_write(path, lambda tmp: strip.save(tmp, format="PNG"))
        written.append(str(path))

    # images with the most objects show merge and overlap best
    counts = Counter(a["image_id"] for a in gt["annotations"])
    busiest = sorted(gt["images"], key=lambda im: -counts.get(im["id"], 0))[:n]
    for im in busiest:
        rgb = read_image_rgb(data["images"] / im["file_name"])
        panels = [draw_instances(rgb, anns_of(gt, im["id"]), cats)]
        titles = ["GT"]
        for m, coco in preds.items():
            panels.append(draw_instances(rgb, anns_of(coco, im["id"]), cats))
            titles.append(m)
        save(out_dir / f"proxy_{im['id']:05d}.png", panels, titles)

    if maskrcnn_ckpt:
        from boxcaseg.maskrcnn.predict import load_maskrcnn, run_model

        val = read_json(data["val_gt"])
        model, ckpt = load_maskrcnn(maskrcnn_ckpt)
        images = [(im["id"], read_image_rgb(data["images"] / im["file_name"]))
                  for im in val["images"][:n]]
        results = run_model(model, images, "cpu", ckpt["categories"], progress=False)
        vcats = {c["id"]: c["name"] for c in val["categories"]}
        for iid, rgb in images:
            dets = [r for r in results if r["image_id"] == iid and r["score"] >= 0.5]
            save(out_dir / f"maskrcnn_{iid:05d}.png",
                 [draw_instances(rgb, anns_of(val, iid), vcats), draw_instances(rgb, dets, vcats)],
                 ["GT", "Mask R-CNN (BoxCaseg masks)"])
    return written


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, seed: int = 0,
             fresh: bool = False, progress: bool = True, all_maskrcnn: bool = False
             ) -> dict[str, Any]:
    """Run the pipeline under ``out_dir`` and return (and write) the results dict."""
    from boxcaseg.data.demo import make_demo_data

    t_start = time.perf_counter()
    size = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out, fresh)
    prev = stages.dir / "seconds.json"
    seconds_before = 0.0 if fresh or not prev.is_file() else float(read_json(prev)["seconds"])

    marks: list[tuple[str, float]] = []

    def stage(title: str, key: str) -> None:
        marks.append((key, time.perf_counter()))
        _banner(title)

    stage(f"1/5 demo data ({'quick' if quick else 'full'} size) in {out / 'data'}", "data")
    data = make_demo_data(out / "data", seed, n_salient=size.n_salient, n_train=size.n_train,
                          n_val=size.n_val, image_size=size.image_size,
                          salient_size=size.salient_size, progress=progress)

    stage("2/5 BoxCaseg training: all three heads, then the weak-head-only ablation",
          "boxcaseg_training")
    ckpts = {
        "boxcaseg": _train_boxcaseg("boxcaseg", data, out, size, size.boxcaseg_steps,
                                    ["weak", "salient", "transferred"], seed, stages, fresh,
                                    progress),
        "boxcaseg_weak": _train_boxcaseg("boxcaseg_weak", data, out, size, size.weak_steps,
                                         ["weak"], seed, stages, fresh, progress),
    }

    stage("3/5 proxy masks for the training boxes, scored against the hidden GT masks",
          "labeling")
    proxy = {m: _label(m, data, out, size, ckpts, stages, progress) for m in LABEL_METHODS}

    stage("4/5 Mask R-CNN trained on each set of masks, evaluated on the validation images",
          "maskrcnn")
    train_jsons = {"box": Path(proxy["box"]["labels"]),
                   "grabcut": Path(proxy["grabcut"]["labels"]),
                   "boxcaseg": Path(proxy["boxcaseg"]["labels"]), "gt": data["train_gt"]}
    sources = MASKRCNN_SOURCES if all_maskrcnn else MASKRCNN_DEFAULT
    mrcnn = {s: _maskrcnn(s, train_jsons[s], data, out, size, seed, stages, progress)
             for s in sources}

    stage("5/5 results", "overlays")
    overlays = _overlays(data, out, {m: proxy[m]["labels"] for m in ("box", "grabcut",
                                                                     "boxcaseg")},
                         mrcnn["boxcaseg"]["checkpoint"], size.overlays)
    seconds = seconds_before + time.perf_counter() - t_start
    ends = [t for _, t in marks[1:]] + [time.perf_counter()]
    results = {
        "version": RESULTS_VERSION,
        "quick": quick,
        "seed": seed,
        "size": dataclasses.asdict(size),
        "proxy_masks": {m: {k: proxy[m][k] for k in ("miou_star", "iou50", "iou75",
                                                    "instances_per_s", "drop_rate",
                                                    "miou_star_kept")}
                        for m in LABEL_METHODS},
        "maskrcnn": {s: {k: mrcnn[s][k] for k in ("AP", "AP50", "AP75")}
                     for s in sources},
        "maskrcnn_voc": {s: mrcnn[s]["voc"] for s in sources},
        "overlays": overlays,
        "seconds": seconds,
        # this run's wall time per stage (stages reused from an earlier run take ~0 here)
        "stage_seconds": {name: round(end - t, 1) for (name, t), end in zip(marks, ends)},
    }
    atomic_write_json(prev, {"seconds": seconds})
    atomic_write_json(out / "results.json", results, indent=2)
    print(format_results(results), flush=True)
    print(f"\nwrote {out / 'results.json'} and {len(overlays)} overlay PNGs in "
          f"{out / 'overlays'}", flush=True)
    report = _report(data, out, proxy)
    print(f"report (open in a browser): {report.resolve()}", flush=True)
    return results


def _report(data: dict[str, Path], out: Path, proxy: dict[str, dict[str, Any]]) -> Path:
    """``OUT/report/``: BoxCaseg's proxy masks of the training boxes, worst IoU first, beside
    the other labelers' and the hidden GT."""
    from boxcaseg.report.build import make_report

    order = ["boxcaseg"] + [m for m in LABEL_METHODS if m != "boxcaseg"]
    return make_report(proxy["boxcaseg"]["labels"], out / "report", images_root=data["images"],
                       gt=data["train_gt"], baselines=[proxy[m]["labels"] for m in order[1:]],
                       title="boxcaseg demo: proxy masks of the training boxes",
                       speeds={m: proxy[m]["instances_per_s"] for m in order})
