"""Loading checkpoints written by other code bases (DenseCL, MoCo, torchvision, detectron2)."""
