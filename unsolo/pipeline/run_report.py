"""What ``unsolo run`` shows of a finished run: ``report.html`` (metrics, loss curves, masks, how each stage ran)."""

from __future__ import annotations

from pathlib import Path

from unsolo.utils.io import read_json
from unsolo.utils.report import read_jsonl


def write_run_report(out: Path, title: str, metrics: dict, logs: dict[str, Path], gt, eval_src, eval_root, coarse: Path,
                     final: Path, vis_images: int, generator_label: str = "Free Mask") -> Path:
    """``out/report.html``: metric table + AP bars, loss curves, and ground truth / coarse / final overlays."""
    import numpy as np

    from unsolo.data.coco import decode_segmentation, load_annotation_file
    from unsolo.data.images import list_images, load_image
    from unsolo.utils.report import write_report
    from unsolo.utils.vis import overlay_masks

    def masks_by_image(anns, h, w, iid, min_score=0.0):
        sel = [a for a in anns if int(a["image_id"]) == iid and a.get("score", 1.0) >= min_score]
        if not sel:
            return np.zeros((0, h, w), bool)
        return np.stack([decode_segmentation(a["segmentation"], h, w).astype(bool) for a in sel])

    coarse_file = out / "freemask" / "eval_pseudo.json"
    coarse_anns = load_annotation_file(coarse_file if coarse_file.is_file() else coarse)["annotations"]
    final_anns = read_json(final, "predictions")
    final_anns = final_anns["annotations"] if isinstance(final_anns, dict) else final_anns
    gt_anns = load_annotation_file(gt)["annotations"] if gt is not None else None
    rows = []
    for rec in list_images(eval_src, eval_root)[:vis_images]:
        try:
            img = load_image(rec.path)
        except Exception:  # unreadable: already reported by the stages
            continue
        h, w = img.shape[:2]
        cols = []
        if gt_anns is not None:
            cols.append(("ground truth", overlay_masks(img, masks_by_image(gt_anns, h, w, rec.image_id))))
        cols.append((f"coarse masks ({generator_label})", overlay_masks(img, masks_by_image(coarse_anns, h, w, rec.image_id))))
        cols.append(("final model (score >= 0.3)",
                     overlay_masks(img, masks_by_image(final_anns, h, w, rec.image_id, min_score=0.3))))
        rows.append((rec.file_name, cols))
    notes = [f"Run folder: {out}.", *stage_facts(out)]
    return write_report(out / "report.html", title, metrics, overlays=rows,
                        logs={k: read_jsonl(v) for k, v in logs.items()}, notes=notes)


def stage_facts(out: Path) -> list[str]:
    """One line per stage that ran: its seed, precision, length and seconds (read back from its own files)."""
    import yaml

    lines = []
    pre = out / "pretrain"
    if (pre / "summary.json").is_file() and (pre / "config.yaml").is_file():
        sm, pc = read_json(pre / "summary.json", "summary"), yaml.safe_load((pre / "config.yaml").read_text())
        lines.append(f"DenseCL: seed {pc.get('seed')}, {sm.get('iterations')} iterations, precision "
                     f"{sm.get('precision', 'float32')}.")
    for rdir in sorted(out.glob("round*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0):
        if not (rdir / "config.yaml").is_file() or not (rdir / "metrics.jsonl").is_file():
            continue
        tc = yaml.safe_load((rdir / "config.yaml").read_text())
        recs = read_jsonl(rdir / "metrics.jsonl")
        budget = read_json(rdir / "time_budget.json", "time budget") if (rdir / "time_budget.json").is_file() else None
        length = f"{recs[-1]['iteration'] + 1} iterations" if recs else "no iteration logged"
        if budget:
            length += f" (fixed by a {budget['max_time']:.0f} s time budget at {budget['sec_per_iter']:.2f} s/iteration)"
        lines.append(f"SOLO {rdir.name}: seed {tc.get('seed')}, {length}, precision "
                     f"{tc.get('solver', {}).get('precision', 'float32')}.")
    return lines
