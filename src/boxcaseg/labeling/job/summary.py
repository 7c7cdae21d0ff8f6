"""What a labeling run did: counts for the output file and the console."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LabelSummary:
    """What a labeling run did. ``to_file_dict`` holds the deterministic part (in the JSON)."""

    method: str
    images: int = 0                   # images in the dataset
    instances: int = 0                # non-crowd annotations with a usable box
    instances_labeled: int = 0        # ... that got a mask (kept or dropped)
    dropped: int = 0                  # labeled, but ignore_mask (empty or low proxy IoU)
    empty_masks: int = 0              # dropped because the mask was empty
    crowd: int = 0                    # crowd annotations, passed through
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (annotation id, reason)
    clipped: int = 0                  # boxes sticking out of their image, clipped by the reader
    images_failed: list[tuple[int, str]] = field(default_factory=list)  # (image id, error)
    annotations_failed: int = 0       # annotations of failed images (no mask)
    grabcut_fallbacks: int = 0        # boxes GrabCut could not run on (filled box used)
    gt_masks: int = 0                 # annotations with a GT mask, passed through unchanged
    # run-specific (not written into the output file)
    images_resumed: int = 0           # images taken from a previous run's sidecar
    instances_this_run: int = 0
    seconds: float = 0.0              # wall time of the labeling loop of this run
    setup_seconds: float = 0.0        # model preparation (device, TorchScript trace)

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.instances_labeled if self.instances_labeled else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances_this_run / self.seconds if self.seconds > 0 else 0.0

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(_reason_kind(r) for _, r in self.skipped))

    def to_file_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "instances": self.instances,
            "instances_labeled": self.instances_labeled, "dropped": self.dropped,
            "drop_rate": round(self.drop_rate, 6), "empty_masks": self.empty_masks,
            "crowd_passed_through": self.crowd, "skipped": len(self.skipped),
            "skipped_reasons": self.skipped_reasons(),
            "images_failed": len(self.images_failed),
            "annotations_failed": self.annotations_failed,
            "grabcut_fallbacks": self.grabcut_fallbacks, "gt_masks": self.gt_masks,
        }

    def format(self) -> str:
        lines = [
            f"method {self.method}: {self.instances_labeled} instances labeled in "
            f"{self.images} images ({self.images_resumed} resumed)",
            f"  dropped (ignore_mask): {self.dropped} ({100 * self.drop_rate:.1f}%), "
            f"of which empty masks: {self.empty_masks}",
            f"  skipped boxes: {len(self.skipped)} {self.skipped_reasons() or ''}".rstrip(),
            f"  boxes clipped to their image: {self.clipped}",
            f"  crowd annotations passed through: {self.crowd}",
            f"  ground-truth masks kept as given (mask_source gt): {self.gt_masks}",
            f"  images failed: {len(self.images_failed)} "
            f"({self.annotations_failed} annotations left without masks)",
        ]
        for image_id, err in self.images_failed[:10]:
            lines.append(f"    image {image_id}: {err}")
        if self.method == "grabcut":
            lines.append(f"  GrabCut fell back to the filled box: {self.grabcut_fallbacks}")
        lines.append(f"  speed: {self.instances_per_s:.2f} instances/s "
                     f"({self.instances_this_run} in {self.seconds:.1f} s; "
                     f"setup {self.setup_seconds:.1f} s)")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    if "sub-pixel" in reason:
        return "sub_pixel_box"
    if "outside" in reason:
        return "box_outside_image"
    if "zero" in reason or "negative" in reason:
        return "zero_size_box"
    return reason
