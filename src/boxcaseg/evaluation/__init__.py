"""Box->mask quality (IoU@k, mIoU*) and instance segmentation AP (COCO, VOC)."""

from boxcaseg.evaluation.coco_ap import coco_mask_ap
from boxcaseg.evaluation.instance_iou import instance_ious, mask_quality
from boxcaseg.evaluation.report import format_table
from boxcaseg.evaluation.voc_ap import voc_ap_from_pr, voc_mask_ap

__all__ = ["coco_mask_ap", "format_table", "instance_ious", "mask_quality", "voc_ap_from_pr",
           "voc_mask_ap"]
