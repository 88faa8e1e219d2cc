"""Comparison report: tables (markdown + CSV), plots, headline metrics, built from the runs named in params.

The package follows the report's own sections, each layer importing only the ones before it:
:mod:`~xmkd.report.load` (inputs, layout, config) -> :mod:`~xmkd.report.analysis` (estimates, paired
differences, premise) -> :mod:`~xmkd.report.tables` (formatting, CSV frames, headline) ->
:mod:`~xmkd.report.text` (sentences, markdown) and :mod:`~xmkd.report.plots`; :func:`build_report` writes them all.

Outputs: ``reports/results.md``, ``results.csv`` (long: one row per run, seed, metric),
``summary.csv`` (per run and metric: mean, std, 95% CI, n), ``accuracy.png``, ``tau0.png``,
``robustness.png``, ``ablations.png``, ``training_curves.png``, the data of the DVC plots in ``reports/plots/``
(:mod:`~xmkd.report.plotdata`), and the headline numbers (:class:`~xmkd.report.tables.Headline`) that the stage
writes to ``metrics/summary.json`` and ``metrics/runs.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xmkd.report.analysis import Analysis, analyse
from xmkd.report.load import Layout, ReportConfig, RunData, RunSpecLike, stage_of
from xmkd.report.plotdata import write_plot_data
from xmkd.report.plots import plot_ablations, plot_accuracy, plot_robustness, plot_tau0, plot_training_curves
from xmkd.report.tables import Headline, flat_metrics, fmt_est, headline, results_frame, run_headline, summary_frame
from xmkd.report.text import markdown

__all__ = [
    "Analysis",
    "Headline",
    "Layout",
    "ReportConfig",
    "RunData",
    "RunSpecLike",
    "analyse",
    "build_report",
    "flat_metrics",
    "fmt_est",
    "headline",
    "markdown",
    "run_headline",
    "stage_of",
]


def build_report(
    specs: Sequence[RunSpecLike], cfg: ReportConfig, layout: Layout | None = None, out_dir: Path | None = None
) -> Headline:
    """Write every table and plot of the report to ``out_dir`` (default ``layout.reports``), the DVC plots' data
    to ``<out_dir>/plots``.

    Args:
        specs: every run named in params, in params order (:func:`xmkd.runs.run_specs`).
        cfg: seeds, benchmark rate, main τ0 and statistics settings (:meth:`ReportConfig.from_params`).
        layout: where the input files are (default: the current directory's).
        out_dir: output folder (created).

    Returns:
        The headline numbers for ``metrics/summary.json`` and ``metrics/runs.json`` (:class:`Headline`).

    Raises:
        DataError: an input file is missing or invalid; the message names the DVC stage to run.
    """
    layout = layout or Layout()
    a = analyse(specs, cfg, layout)
    out = out_dir or layout.reports
    out.mkdir(parents=True, exist_ok=True)
    results_frame(a).to_csv(out / "results.csv", index=False, float_format="%.6f")
    summary_frame(a).to_csv(out / "summary.csv", index=False, float_format="%.6f")
    (out / "results.md").write_text(markdown(a))
    plot_accuracy(a, out / "accuracy.png")
    plot_tau0(a, out / "tau0.png")
    plot_robustness(a, out / "robustness.png")
    plot_ablations(a, out / "ablations.png")
    plot_training_curves(a, out / "training_curves.png")
    write_plot_data(a, out / "plots")
    return Headline(headline(a), run_headline(a))
