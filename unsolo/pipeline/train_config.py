"""Configuration of ``unsolo train`` (and ``unsolo finetune``, which runs the same loop): data, solver, run.

Defaults are the official values (``freesolo_30k.yaml`` + detectron2 defaults, spec sections 6-7); presets in
``unsolo/configs/train/`` and ``--set`` overrides change them (:func:`resolve_train_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unsolo.config import from_dict, merge_dicts, parse_overrides, read_preset
from unsolo.data.copy_paste import MAX_OCCLUSION
from unsolo.data.transforms import StrongAugConfig
from unsolo.engine import budget as time_budget
from unsolo.modeling.solov2 import ModelConfig


@dataclass
class DataConfig:
    """Training data and augmentation (spec section 6); defaults are the official values."""

    min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)  # MIN_SIZE_TRAIN: short side drawn uniformly
    max_size: int = 1333  # MAX_SIZE_TRAIN: cap on the long side
    flip_prob: float = 0.5  # horizontal flip probability (weak view; the strong view shares the geometry)
    strong: StrongAugConfig = field(default_factory=StrongAugConfig)  # photometric strong view
    strong_on_device: bool = False  # make the strong view on the training device instead of in the DataLoader workers
    copy_paste: bool = True  # strong views receive objects from the reversed batch's weak views
    max_occlusion: float = MAX_OCCLUSION  # copy-paste: a copy may cover less than this fraction of any existing object
    box_source: Literal["mask", "json"] = "mask"  # "mask": tight boxes from the masks (fix of quirk Q1);
    #                                               "json": read 'bbox' as XYWH like the official loader
    class_agnostic: bool = True  # every instance gets class 0 (pseudo-labels have one category anyway); False: the
    #                              label file's categories map to contiguous classes (at most model.num_classes)
    workers: int = 4  # DataLoader worker processes per GPU (decoding + per-image augmentation); 0 = in the main process
    two_views: bool = True  # True: every image is fed as a strong (+ copy-paste) and a weak view (FreeSOLO);
    #                         False: once, as its weak view only (supervised SOLOv2 / few-label fine-tuning)
    max_label_span: float | None = None  # deviation, off by default (official: every label is kept): drop labels
    #   whose box covers more than this fraction of the image along both axes (e.g. 0.7); under the box-projection
    #   losses such a label only asks for a mask that touches every row and column (docs/ablations.md)


@dataclass
class SolverConfig:
    """Optimisation schedule (spec section 7); defaults are the official values."""

    max_iter: int = 30000  # MAX_ITER (about 2 epochs of COCO train2017 + unlabeled2017)
    ims_per_batch: int = 16  # IMS_PER_BATCH: unique images per iteration over all processes (each is fed twice)
    base_lr: float = 0.001  # BASE_LR for reference_batch images per iteration
    reference_batch: int = 16  # lr = base_lr * ims_per_batch / reference_batch (linear scaling rule)
    lr: float | None = None  # explicit learning rate; overrides the scaling rule when set
    optimizer: Literal["sgd", "adamw"] = "sgd"  # "sgd" (official); "adamw" uses betas and the same lr / weight_decay
    #                                            fields (an option: it learned no faster at CPU scale, docs/ablations.md)
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    weight_decay: float = 1e-4  # WEIGHT_DECAY (biases included, as detectron2)
    weight_decay_norm: float = 0.0  # WEIGHT_DECAY_NORM: on GroupNorm / BatchNorm weights and biases
    warmup_iters: int = 1000  # linear warm-up length
    warmup_factor: float = 0.01  # warm-up starts at this fraction of the learning rate
    steps: tuple[int, ...] = ()  # iterations where the LR is multiplied by gamma (official: none)
    gamma: float = 0.1
    clip_grad_norm: float | None = None  # gradient-norm clipping (official: off)
    checkpoint_period: int = 5000  # save RUN/model_NNNNNNN.pth every this many iterations
    log_period: int = 20  # write a metrics.jsonl line every this many iterations
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # the network's forward: auto = bfloat16 autocast on
    #   CPUs with native bf16 (AMX / AVX512-BF16 / Arm BF16), float32 elsewhere; losses and optimizer stay float32.
    #   CUDA keeps the --amp option (amp / amp_dtype). float32 = the official numerics (parity)
    max_time: float | str | None = None  # time budget of the loop (seconds, or "10m", "1.5h"): the first iterations
    #   are timed, then the length is fixed to fill it and the LR schedule re-fitted (max_iter only shapes the
    #   schedule then: its steps keep their fractions); None = train max_iter iterations


@dataclass
class TrainConfig:
    """``unsolo train`` configuration: model + data + solver."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    seed: int = 0  # fixes initialisation, data order, augmentations and copy-paste draws
    amp: bool = False  # mixed precision (CUDA only; official: off)
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # float16 uses a GradScaler; bfloat16 (Ampere+) needs none
    find_unused_parameters: bool = True  # DDP option (official: True)
    backbone_weights: str | None = None  # torchvision-named ResNet state dict (e.g. from `unsolo pretrain`)
    init_checkpoint: str | None = None  # full SOLO checkpoint (this project's or official FreeSOLO) loaded before
    #                                     training (not when resuming; the iteration, optimizer and pairwise warm-up
    #                                     counter start again); backbone_weights, if also set, apply after it.
    #                                     Official self-training: unset (each round restarts from DenseCL)
    init_exclude: tuple[str, ...] = ()  # parameter-name prefixes NOT taken from init_checkpoint (keep their fresh
    #                                     initialisation), e.g. ins_head.cate_pred. ; empty = transfer everything
    tensorboard: bool = False  # also log to RUN/tensorboard (if the tensorboard package is installed)
    channels_last: bool | None = None  # NHWC weights and activations (the convolutions pick faster kernels: -9 % CPU
    #                                    time per small_r18 step; same values up to float rounding). None = on CPU only
    #                                    (unmeasured on GPUs); checkpoints load into either layout


def resolve_train_config(preset: str | None = None, overrides=(), extra: dict | None = None,
                         stage: str = "train") -> TrainConfig:
    """Defaults <- preset (of ``unsolo/configs/<stage>/``) <- ``extra`` (named CLI flags) <- ``--set`` overrides.

    A train preset may name a model preset (``model_preset: small_r18``, from ``unsolo/configs/model/``); its
    fields are applied first, then the preset's own ``model:`` entries.
    """
    data: dict = dict(read_preset(stage, preset)) if preset else {}
    model_preset = data.pop("model_preset", None)
    if model_preset:
        data["model"] = merge_dicts(read_preset("model", model_preset), data.get("model") or {})
    if extra:
        data = merge_dicts(data, extra)
    cfg = from_dict(TrainConfig, merge_dicts(data, parse_overrides(overrides)))
    time_budget.check_budget(cfg.solver.max_time)  # a bad budget fails here, before any data is read
    return cfg
