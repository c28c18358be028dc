"""Scoring and looking at detections: decode + NMS and COCO mAP from pycocotools (``evaluate``), VOC AP50 and the F1
display threshold (``voc``), how anchors fit a data set (``anchor_fit``), a checkpoint's predictions (``inference``)
and drawn boxes (``visualize``).

May import: ``model``, ``data`` and the ground floor.
"""
