"""Evaluation: class-agnostic COCO metrics (pycocotools, ``useCats=0``) by default."""

from unsolo.evaluation.coco_eval import METRIC_NAMES, evaluate, format_table, write_metrics

__all__ = ["METRIC_NAMES", "evaluate", "format_table", "write_metrics"]
