"""Matplotlib figures for reports, written as PNG files with the non-interactive backend."""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _save(figure, path, **savefig_options):
    """Lay out `figure`, write it to `path` (creating folders), close it and return the path."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, **savefig_options)
    plt.close(figure)
    return path


def line_plot(path, x, series, *, xlabel, ylabel, title, reference_lines=None, xticks=None):
    """Plot named series against shared x values and save a PNG.

    Args:
      path: output file.
      x: x values shared by every series.
      series: name -> y values (None entries are left as gaps).
      xlabel, ylabel, title: axis labels and title.
      reference_lines: name -> constant y drawn as a dashed horizontal line.
      xticks: explicit tick positions, e.g. the bit widths evaluated.

    Returns:
      the saved path.
    """
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, values in series.items():
        ys = [float("nan") if v is None else v for v in values]
        axes.plot(x, ys, marker="o", label=name)
    for index, (name, value) in enumerate((reference_lines or {}).items()):
        axes.axhline(value, linestyle="--", linewidth=1, color=f"C{index + len(series)}", label=name)
    if xticks is not None:
        axes.set_xticks(list(xticks))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def histogram(path, samples, *, bins, xlabel, title):
    """Histogram of named samples (name -> 1-d array), overlaid, saved as PNG."""
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, values in samples.items():
        axes.hist(values, bins=bins, histtype="step", label=name, density=True)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def histogram_from_counts(path, edges, counts, *, xlabel, title):
    """Step histograms of precomputed counts (name -> counts per bin), as densities, saved as PNG."""
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    widths = [right - left for left, right in zip(edges[:-1], edges[1:])]
    for name, values in counts.items():
        total = sum(values) or 1
        density = [v / total / width for v, width in zip(values, widths)]
        axes.stairs(density, edges, label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def curves_plot(path, curves, *, xlabel, ylabel, title, reference_lines=None):
    """Plot named curves, each with its own x values, and save a PNG.

    Args:
      path: output file.
      curves: name -> (x values, y values) of equal length.
      xlabel, ylabel, title: axis labels and title.
      reference_lines: name -> constant y drawn as a dashed horizontal line.

    Returns:
      the saved path.
    """
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, (xs, ys) in curves.items():
        axes.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    for index, (name, value) in enumerate((reference_lines or {}).items()):
        axes.axhline(value, linestyle="--", linewidth=1, color=f"C{index + len(curves)}", label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def bar_plot(path, categories, series, *, ylabel, title, reference_lines=None):
    """Grouped bars: one group per category, one bar per named series, saved as PNG.

    Args:
      path: output file.
      categories: group labels along x.
      series: name -> one value per category (None leaves a gap).
      ylabel, title: axis label and title.
      reference_lines: name -> constant y drawn as a dashed horizontal line.

    Returns:
      the saved path.
    """
    path = Path(path)
    figure, axes = plt.subplots(figsize=(max(6.4, 0.9 * len(categories) + 2), 4.2), dpi=120)
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(categories))]
        ys = [float("nan") if v is None else v for v in values]
        axes.bar(xs, ys, width=width, label=name)
    for index, (name, value) in enumerate((reference_lines or {}).items()):
        axes.axhline(value, linestyle="--", linewidth=1, color=f"C{index + len(series)}", label=name)
    axes.set_xticks(range(len(categories)))
    axes.set_xticklabels(categories, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.3)
    # The legend sits right of the axes, so it never covers a bar.
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path, bbox_inches="tight")


def isolated(values):
    """Mask of the finite entries of a 1-D array whose neighbours are NaN or missing."""
    finite = np.isfinite(values)
    padded = np.pad(finite, 1)  # False beyond both ends
    return finite & ~padded[:-2] & ~padded[2:]


def band_plot(path, curves, *, xlabel, ylabel, title, styles=None):
    """Plot named mean curves with shaded bands (such as 95% confidence intervals) and save a PNG.

    Args:
      path: output file.
      curves: name -> (x values, mean, lower bound, upper bound), four sequences of one
        length. NaN entries are left as gaps.
      xlabel, ylabel, title: axis labels and title.
      styles: optional name -> (colour, line style) for some curves; the others take the
        next colours of the default cycle with solid lines.

    Returns:
      the saved path.
    """
    path = Path(path)
    styles = styles or {}
    many = len(curves) > 8
    # A long legend goes beside the axes, where it hides no curve.
    figure, axes = plt.subplots(figsize=(8.4 if many else 6.4, 4.2), dpi=120)
    unstyled = 0
    for name, (xs, mean, lower, upper) in curves.items():
        if name in styles:
            color, linestyle = styles[name]
        else:
            color, linestyle = f"C{unstyled % 10}", "-"
            unstyled += 1
        xs, mean, lower, upper = (np.asarray(values, np.float64) for values in (xs, mean, lower, upper))
        axes.plot(xs, mean, color=color, linestyle=linestyle, label=name)
        axes.fill_between(xs, lower, upper, color=color, alpha=0.15, linewidth=0)
        # A point between two gaps joins no line and shades no band, so it gets a marker
        # and an error bar.
        alone = isolated(mean)
        if alone.any():
            axes.errorbar(xs[alone], mean[alone], yerr=[mean[alone] - lower[alone], upper[alone] - mean[alone]],
                          color=color, linestyle="none", marker="o", markersize=3, capsize=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if many:
        axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        axes.legend(fontsize="small")
    return _save(figure, path)
