"""Data structures and their geometry: 3D boxes in the LiDAR frame (BEV corners, IoU, NMS)."""
from .bev_boxes import bev_corners, bev_intersection_areas, bev_iou, bev_nms, box_tensor, iou_3d

__all__ = ['bev_corners', 'bev_intersection_areas', 'bev_iou', 'bev_nms', 'box_tensor', 'iou_3d']
