"""Loading checkpoints written by other code bases: DenseCL, MoCo and torchvision backbones, official FreeSOLO
(detectron2 layout) models."""
