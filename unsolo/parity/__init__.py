"""Checks against outputs of the official FreeSOLO implementation (``unsolo parity <target>``).

Each target is a module of this package with ``add_arguments(parser)`` and ``run(args) -> dict`` (the JSON
summary printed by the CLI, with ``"ok": bool``). Targets are listed in :data:`TARGETS`.
"""

#: target name -> (module, one-line help). Each engineer adds the line for their target.
TARGETS: dict[str, tuple[str, str]] = {
    "freemask": ("unsolo.parity.freemask", "Free Mask on the parity images vs the official output (mask IoU, score, emb, box)"),
    "solo": ("unsolo.parity.solo", "SOLOv2 inference and training losses vs the official FreeSOLO outputs"),
}
