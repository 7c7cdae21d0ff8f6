"""Box->mask quality (IoU@k, mIoU*) and instance segmentation AP (COCO, VOC)."""
