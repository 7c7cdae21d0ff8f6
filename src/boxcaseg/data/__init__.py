"""Readers (COCO, VOC, salient folders), the synthetic demo generator and training crops."""
