"""A self-contained HTML report: metric table, AP bar chart, loss curves, mask overlays side by side.

Everything is embedded (PNG as base64 data URIs), so ``report.html`` opens in a browser with no server and
can be mailed or attached to an issue as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from unsolo.utils.io import atomic_write

#: Metrics shown in tables, in this order (keys of ``unsolo.evaluation`` results, in percent).
TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _array_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def metrics_table_text(rows: dict[str, dict], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """Fixed-width text table: one row per stage, one column per metric (percent, one decimal)."""
    name_w = max([len("stage")] + [len(k) for k in rows])
    head = "stage".ljust(name_w) + "".join(f"{m:>8}" for m in metrics)
    lines = [head, "-" * len(head)]
    for stage, vals in rows.items():
        cells = "".join(f"{vals[m]:8.1f}" if isinstance(vals.get(m), (int, float)) else f"{'-':>8}" for m in metrics)
        lines.append(stage.ljust(name_w) + cells)
    return "\n".join(lines)


def ap_bar_chart(rows: dict[str, dict], metrics: Sequence[str] = ("AP", "AP50", "AR100")) -> bytes:
    """Grouped bar chart of a few metrics per stage -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(rows)
    x = np.arange(len(stages))
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(stages), 3.4))
    for k, m in enumerate(metrics):
        vals = [float(rows[s].get(m, 0.0) or 0.0) for s in stages]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, vals, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    # wrapped, not rotated: long stage names ("round 0 (SOLO on coarse masks)") stay under their own bars
    ax.set_xticks(x, [textwrap.fill(s, 18) for s in stages], fontsize=8)
    ax.set_ylim(bottom=0)  # metrics are never negative (all zeros, as in a smoke run, centred the axis on 0)
    ax.set_ylabel("class-agnostic mask metric (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _fig_png(fig)


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
    return out


def loss_curves(logs: dict[str, list[dict]], x_key: str = "iteration", total_key: str = "loss") -> bytes:
    """One panel per run: every ``loss*`` term of a JSON-lines log against the iteration -> PNG bytes.

    Runs whose log has the collapse monitor's ``fg_pred`` / ``fg_target`` get a second panel below: the mean
    foreground fraction of the positive cells' predicted masks next to their targets'.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [k for k, v in logs.items() if v]
    fg_rows = any("fg_pred" in r for name in runs for r in logs[name])
    ncols = max(len(runs), 1)
    fig, axes = plt.subplots(2 if fg_rows else 1, ncols, figsize=(4.2 * ncols, 6.2 if fg_rows else 3.2),
                             squeeze=False)
    for col, name in enumerate(runs):
        ax = axes[0][col]
        recs = [r for r in logs[name] if x_key in r]
        keys = sorted({k for r in recs for k in r if k.startswith("loss") and isinstance(r[k], (int, float))})
        # a term that is zero throughout (switched off, e.g. the weak terms under full-mask Dice) has no point on the
        # log axis: leave it out rather than list it in the legend with no line
        keys = [k for k in keys if any(r.get(k) for r in recs)]
        for k in keys:
            xs = [r[x_key] for r in recs if k in r]
            ys = [r[k] for r in recs if k in r]
            ax.plot(xs, ys, label=k, lw=1.6 if k == total_key else 1.0, marker="o" if len(xs) < 20 else None, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_key)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        if fg_rows:
            ax = axes[1][col]
            for k, label in (("fg_pred", "predicted masks"), ("fg_target", "their targets")):
                pts = [(r[x_key], r[k]) for r in recs if k in r]
                if pts:
                    ax.plot(*zip(*pts), label=label, marker="o" if len(pts) < 20 else None, ms=3)
            ax.set_title("foreground fraction (p > 0.5), positive cells", fontsize=9)
            ax.set_xlabel(x_key)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _fig_png(fig)


def write_report(
    path: str | Path,
    title: str,
    metrics: dict[str, dict],
    overlays: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]] = (),
    logs: dict[str, list[dict]] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.html``.

    Args:
        metrics: stage name -> {metric: percent}.
        overlays: rows of (row label, [(column label, RGB uint8 image), ...]); e.g. one row per image with
            columns ground truth / coarse masks / final predictions.
        logs: run name -> JSON-lines records with ``iteration`` and ``loss*`` keys.
        notes: paragraphs shown under the title (commands, timings).
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}figure{display:inline-block;margin:4px}"
        "figcaption{font-size:12px;color:#444;text-align:center}img{image-rendering:pixelated}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    if metrics:
        parts.append("<h2>Class-agnostic COCO metrics (%)</h2><table><tr><th>stage</th>")
        parts += [f"<th>{m}</th>" for m in TABLE_METRICS]
        parts.append("</tr>")
        for stage, vals in metrics.items():
            cells = "".join(
                f"<td>{vals[m]:.1f}</td>" if isinstance(vals.get(m), (int, float)) else "<td>-</td>" for m in TABLE_METRICS
            )
            parts.append(f"<tr><td>{html.escape(stage)}</td>{cells}</tr>")
        parts.append("</table>")
        parts.append(f"<p><img alt='AP per stage' src='{_png_data_uri(ap_bar_chart(metrics))}'></p>")
    if logs and any(logs.values()):
        parts.append("<h2>Loss curves</h2>")
        parts.append(f"<p><img alt='loss curves' src='{_png_data_uri(loss_curves(logs))}'></p>")
    if overlays:
        parts.append("<h2>Masks</h2>")
        for label, cols in overlays:
            parts.append(f"<div><h3>{html.escape(label)}</h3>")
            for cap, img in cols:
                parts.append(
                    f"<figure><img width='{min(img.shape[1] * 2, 360)}' src='{_png_data_uri(_array_png(img))}'>"
                    f"<figcaption>{html.escape(cap)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("</body></html>")
    text = "\n".join(parts)
    return atomic_write(path, lambda f: f.write(text))
