"""Report figures are written as PNG files."""

import numpy as np

from harness import plots


def test_curves_plot_writes_png(tmp_path):
    path = plots.curves_plot(
        tmp_path / "sub" / "curves.png",
        {"a": ([0.5, 1.0, 2.0], [10, 20, 15]), "b": ([1.0, 3.0], [5, 25])},
        xlabel="epochs", ylabel="top-1 (%)", title="curves", reference_lines={"float32": 30},
    )
    assert path == tmp_path / "sub" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_bar_plot_writes_png(tmp_path):
    path = plots.bar_plot(
        tmp_path / "bars.png", ["linear->mlp", "mlp->cnn"], {"naive": [0.2, None], "confidence": [0.5, 0.7]},
        ylabel="PGR", title="bars", reference_lines={"published": 0.8},
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_histogram_from_counts_writes_png(tmp_path):
    path = plots.histogram_from_counts(tmp_path / "h.png", [0.0, 0.5, 1.0], {"a": [3, 1], "b": [0, 4]},
                                       xlabel="x", title="t")
    assert path == tmp_path / "h.png"
    assert path.stat().st_size > 1000


def test_band_plot_writes_png_with_gaps(tmp_path):
    nan = float("nan")
    path = plots.band_plot(
        tmp_path / "band.png",
        {"ppo": ([1, 2, 3], [0.1, nan, 0.5], [0.0, nan, 0.4], [0.2, nan, 0.6])},
        xlabel="environment steps", ylabel="return", title="bands",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_isolated_marks_points_between_gaps():
    nan = float("nan")
    np.testing.assert_array_equal(plots.isolated(np.array([0.8, nan, nan, 0.01])), [True, False, False, True])
    np.testing.assert_array_equal(plots.isolated(np.array([1.0, 2.0, nan, 3.0])), [False, False, False, True])
    np.testing.assert_array_equal(plots.isolated(np.array([5.0])), [True])
    assert plots.isolated(np.array([])).shape == (0,)


def test_band_plot_draws_a_lone_point(tmp_path, monkeypatch):
    nan = float("nan")
    bars = []
    monkeypatch.setattr(plots.plt.Axes, "errorbar", lambda self, x, y, **kwargs: bars.append((list(x), list(y))))
    plots.band_plot(tmp_path / "lone.png", {"tecle": ([1, 2, 3, 4], [0.8, nan, nan, 0.1], [0.7, nan, nan, 0.0],
                                                      [0.9, nan, nan, 0.2])},
                    xlabel="steps", ylabel="return", title="lone points")
    assert bars == [([1.0, 4.0], [0.8, 0.1])]
