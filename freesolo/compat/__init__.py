"""Loading foreign checkpoints (official FreeSOLO / detectron2 layouts)."""
