"""Collapse monitor of SOLO training: do the predicted masks stay far larger than their targets?

With the weak losses on noisy coarse masks the mask branch can fall into a trivial solution: every positive cell
predicts (nearly) the whole image except the objects (docs/ablations.md). The sign is simple and cheap to watch:
the mean foreground fraction (``p > 0.5``) of the predicted masks of positive cells stays far above the same
fraction of their targets. The trainer logs both per log window (``fg_pred``, ``fg_target`` in ``metrics.jsonl``)
and feeds them here; :meth:`CollapseMonitor.update` returns a plain-words warning once, the first time the gap
persists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: predictions count as "far above" their targets when both hold: at least RATIO times the target fraction and at
#: least MARGIN (absolute fraction of the mask area) more
RATIO = 2.0
MARGIN = 0.2
#: ... for this many consecutive log windows after the learning-rate warm-up
PATIENCE = 3


def far_above(fg_pred: float, fg_target: float, ratio: float = RATIO, margin: float = MARGIN) -> bool:
    """Whether a predicted foreground fraction is far above its target's (both in [0, 1])."""
    return fg_pred >= ratio * fg_target and fg_pred - fg_target >= margin


@dataclass
class CollapseMonitor:
    """Warns once when predicted masks stay far above their targets for ``patience`` log windows in a row.

    ``start_iter``: windows ending before it are ignored (the learning-rate warm-up, when masks are still random).
    """

    start_iter: int = 0
    patience: int = PATIENCE
    ratio: float = RATIO
    margin: float = MARGIN
    streak: int = 0
    warned: bool = False
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def update(self, iteration: int, fg_pred: float, fg_target: float) -> str | None:
        """Record one log window; return the warning text the first time the collapse condition holds."""
        self.history.append((iteration, fg_pred, fg_target))
        if iteration < self.start_iter:
            return None
        self.streak = self.streak + 1 if far_above(fg_pred, fg_target, self.ratio, self.margin) else 0
        if self.warned or self.streak < self.patience:
            return None
        self.warned = True
        recent = self.history[-self.patience:]
        pred = sum(r[1] for r in recent) / len(recent)
        tgt = sum(r[2] for r in recent) / len(recent)
        return (f"mask collapse: since iteration {recent[0][0]} the predicted masks of positive cells cover "
                f"{100 * pred:.0f} % of the image on average, against {100 * tgt:.0f} % for their targets: the masks "
                "are growing far beyond their labels, the way into the weak losses' trivial solution on noisy labels "
                "(masks covering the image but the objects); "
                "docs/ablations.md measures what changes it: the learning rate, the pairwise warm-up "
                "(model.loss.warmup_iters), full-mask Dice first (model.loss.full_dice_iters), cleaner labels")
