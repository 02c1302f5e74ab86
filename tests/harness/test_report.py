"""Run folders are never reused; the report holds each section."""

import datetime

from harness import report


def test_new_run_dir_never_reuses_a_folder(tmp_path):
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    first = report.new_run_dir(tmp_path, "small", now=now)
    (first / "REPORT.md").write_text("first")
    second = report.new_run_dir(tmp_path, "small", now=now)
    assert first.name == "20260102-030405-small"
    assert second.name == "20260102-030405-small-1"
    assert (first / "REPORT.md").read_text() == "first"


def test_write_report_with_sections_and_failures(tmp_path):
    section = report.Section(
        title="An experiment",
        summary="What we ran.",
        comparison=report.markdown_table(["claim", "published", "ours"], [["x", "1", "2"]]),
        plots=[("A plot", "exp/plot.png")],
        command="python -m scripts.x --preset smoke",
        config={"preset": "smoke"},
        deviations=["Smaller data."],
        seconds=90,
    )
    path = report.write_report(tmp_path, [section], preset="smoke", command="python -m scripts.reproduce",
                               failures=[("scripts.y", "ValueError: broken")])
    text = path.read_text()
    assert "## An experiment" in text
    assert "| x | 1 | 2 |" in text
    assert "![A plot](exp/plot.png)" in text
    assert "- Smaller data." in text
    assert "**scripts.y**: ValueError: broken" in text
    assert "Wall time: 1.5 min." in text
