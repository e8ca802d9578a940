import numpy as np

from freesolo.utils.report import metrics_table_text, read_jsonl, write_report


def test_report_is_self_contained(tmp_path):
    metrics = {"coarse masks": {"AP": 1.5, "AP50": 4.0, "AR100": 10.0}, "round 1": {"AP": 3.25, "AP50": 8.0, "AR100": 12.0}}
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iteration": 1, "loss": 2.0, "loss_cate": 1.0}\n{"iteration": 2, "loss": 1.5, "loss_cate": 0.7}\n{"iter')
    recs = read_jsonl(log)
    assert len(recs) == 2  # the cut last line is ignored
    img = np.zeros((16, 16, 3), np.uint8)
    out = write_report(tmp_path / "report.html", "demo", metrics, overlays=[("image 1", [("gt", img), ("pred", img)])], logs={"round 0": recs})
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 4  # bar chart, loss curves, two overlays
    assert "<td>3.2</td>" in text or "<td>3.3</td>" in text
    table = metrics_table_text(metrics)
    assert "round 1" in table and "AP50" in table and "   -" in table
