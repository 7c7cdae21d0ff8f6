"""Report and export cost at scale, on the embedded synthetic demo data.

    python bench/bench_report.py [--copies 28] [--work /tmp/bench_report]

Makes the demo's box set (24 images), labels it with GrabCut and the filled box, then
repeats every annotation ``--copies`` times (new ids, same images) to get thousands of
instances, and times, in one run on one machine:

* the floor: decoding every instance's RLE mask once per method (what any report must do);
* ``make_report`` with GT and one baseline (summary, plots, a crop per instance per method);
* each exporter (CVAT polygons, FiftyOne RLE, Label Studio polygons);
* Chromium loading the first gallery page (lazy images), when chromium and playwright exist.

Writes a markdown section to ``bench/results_report.md`` (command, machine, load, numbers,
report time as a multiple of the decode floor).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _replicate(src: Path, dst: Path, copies: int) -> None:
    d = json.loads(src.read_text())
    anns = d["annotations"]
    d["annotations"] = [{**copy.deepcopy(a), "id": a["id"] + 1_000_000 * k}
                        for k in range(copies) for a in anns]
    dst.write_text(json.dumps(d))


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=28)
    ap.add_argument("--work", default="/tmp/bench_report")
    args = ap.parse_args()

    from boxcaseg.data.coco import load_coco
    from boxcaseg.data.demo import make_demo_data
    from boxcaseg.export.cvat import export_cvat
    from boxcaseg.export.fiftyone import export_fiftyone
    from boxcaseg.export.labelstudio import export_labelstudio
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.run import label_dataset
    from boxcaseg.report.build import make_report
    from boxcaseg.labeling.review import load_labels

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    data = make_demo_data(work / "data", 0, n_salient=2, n_train=24, n_val=1, progress=False)
    cfg = LabelConfig(device="cpu")
    for method in ("grabcut", "box"):
        label_dataset(load_coco(data["train"], data["images"]), work / f"{method}1.json",
                      method, cfg, progress=False)
        _replicate(work / f"{method}1.json", work / f"{method}.json", args.copies)
    _replicate(Path(data["train_gt"]), work / "gt.json", args.copies)
    rows: dict[str, float] = {}
    load0 = os.getloadavg()

    t = time.perf_counter()
    n = 0
    for m in ("grabcut", "box"):
        lab = load_labels(work / f"{m}.json", data["images"])
        ims = lab.images
        for inst in lab.instances:
            inst.mask(ims[inst.image_id].height, ims[inst.image_id].width)
            n += 1
    rows["decode every mask (floor)"] = time.perf_counter() - t
    n_inst = n // 2

    t = time.perf_counter()
    make_report(work / "grabcut.json", work / "report", images_root=data["images"],
                gt=work / "gt.json", baselines=[work / "box.json"])
    rows["make_report (GT + 1 baseline)"] = time.perf_counter() - t
    report_mb = _dir_mb(work / "report")

    lab = load_labels(work / "grabcut.json", data["images"])
    for name, fn in (("export cvat", lambda: export_cvat(lab, work / "cvat", "none")),
                     ("export fiftyone", lambda: export_fiftyone(lab, work / "fo", "none")),
                     ("export labelstudio (polygons)", lambda: export_labelstudio(
                         lab, work / "ls", "none", mask_format="polygon"))):
        t = time.perf_counter()
        fn()
        rows[name] = time.perf_counter() - t

    browser = "not measured (no chromium/playwright)"
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium:
        import tempfile
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(), executable_path=chromium, headless=True, offline=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"])
            page = ctx.new_page()
            t = time.perf_counter()
            page.goto((work / "report" / "index.html").as_uri(), wait_until="load")
            browser = f"{time.perf_counter() - t:.2f} s to the load event"
            ctx.close()
    load1 = os.getloadavg()
    floor = rows["decode every mask (floor)"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## bench_report.py --copies {args.copies}  ({stamp})",
             "", f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{platform.python_version()}; load average {load0[0]:.1f} before, "
             f"{load1[0]:.1f} after (other jobs share the cores)",
             f"instances: {n_inst} (24 demo images, GrabCut labels + filled-box baseline + GT)",
             "", "| step | seconds | instances/s | x floor |", "|---|---:|---:|---:|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.2f} | {n_inst / v:.0f} | {v / floor:.1f} |")
    lines += ["", f"report folder: {report_mb:.1f} MiB for {n_inst} instances "
              f"({1024 * report_mb / n_inst:.1f} KiB per instance, 3 crops each); "
              f"first page in Chromium: {browser}", ""]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results_report.md"
    prev = out.read_text() if out.is_file() else "# Report and export cost\n\n"
    out.write_text(prev + text + "\n")


if __name__ == "__main__":
    main()
