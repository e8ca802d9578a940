import numpy as np

from unsolo.utils.report import metrics_table_text, read_jsonl, write_report


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


def test_report_renders_in_a_real_browser(tmp_path):
    """report.html opened in headless Chromium: the metric table, the two plots and every overlay are there and
    decoded (each image has a natural size), nothing is fetched from outside, and a screenshot is written (look at
    it: tmp_path/report.png). Skipped, saying why, where Chromium or Playwright cannot be had (.ci/run installs
    Debian's chromium when it is missing)."""
    import json
    import shutil

    import pytest

    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run does it)")
    rng = np.random.default_rng(0)
    overlays = [(f"image {i}", [(c, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for c in ("gt", "coarse", "final")])
                for i in range(2)]
    logs = {"round 0": [{"iteration": i, "loss": 2.0 / (i + 1), "loss_cate": 1.0 / (i + 1), "fg_pred": 0.3,
                         "fg_target": 0.2} for i in range(5)]}
    metrics = {"coarse masks": {"AP": 4.1, "AP50": 8.0, "AR100": 11.7}, "round 0": {"AP": 6.0, "AP50": 12.0, "AR100": 15.0}}
    page_path = write_report(tmp_path / "report.html", "demo <report>", metrics, overlays=overlays, logs=logs)
    external = []
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        state = json.loads(page.evaluate("""() => JSON.stringify({
            title: document.title,
            headers: [...document.querySelectorAll('table tr th')].map(e => e.textContent),
            rows: [...document.querySelectorAll('table tr td:first-child')].map(e => e.textContent),
            images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, done: i.complete})),
            captions: [...document.querySelectorAll('figcaption')].map(e => e.textContent),
        })"""))
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert state["title"] == "demo <report>" and external == []
    assert {"stage", "AP", "AP50", "AR100"} <= set(state["headers"]) and state["rows"] == ["coarse masks", "round 0"]
    imgs = state["images"]
    assert len(imgs) == 2 + 6 and all(i["done"] and i["w"] > 0 and i["h"] > 0 for i in imgs), imgs
    assert {i["alt"] for i in imgs[:2]} == {"AP per stage", "loss curves"}
    assert state["captions"] == ["gt", "coarse", "final"] * 2
    assert (tmp_path / "report.png").stat().st_size > 10_000
