"""The report of a pruning run: its before/after table and its allocation figure.

:func:`dsa_tf.run.pipeline.run_pruning` writes ``report.json``; :func:`load_report` reads it back,
:func:`summary_table` formats it (``dsa-tf report RUN_DIR`` prints it) and
:func:`plot_allocation` draws the channels every group keeps, in network order, like the
allocation figure of the DSA paper.

Example:
    >>> report = {"config": {"budget": 0.5, "resource": "flops", "dataset": "cifar10",
    ...                      "model": "resnet20"},
    ...           "unpruned": {"flops": 1000, "params": 100},
    ...           "stripped": {"flops": 480, "params": 40, "test_accuracy": 0.9}}
    >>> print(summary_table(report).splitlines()[3])
    FLOPs                           1,000          480    0.480
"""

from __future__ import annotations

import json
import os
from typing import Any

PHASES = ("warm-up", "allocation", "fine-tuning")


def load_report(run_dir: str) -> dict:
    """The ``report.json`` of a finished run.

    Raises:
        FileNotFoundError: ``run_dir`` has no report (the run has not finished).
    """
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No report.json in {run_dir}: the run has not finished (start "
                                f"the same dsa-tf prune command again to resume it).")
    with open(path) as file:
        return json.load(file)


def summary_table(report: dict) -> str:
    """The before/after table of a run: FLOPs, params, accuracy, TFLite size and latency."""
    config = report["config"]
    before, after = report["unpruned"], report["stripped"]
    lines = [f"{config['model']} on {config['dataset']}, budget {config['budget']} of the "
             f"{config['resource']}, allocation {config.get('allocation', 'dsa')}",
             f"{'':24}{'unpruned':>13}{'stripped':>13}{'ratio':>9}",
             "-" * 59]

    def row(label: str, a: Any, b: Any, fmt: str) -> None:
        ratio = f"{b / a:9.3f}" if isinstance(a, (int, float)) and isinstance(
            b, (int, float)) and a else f"{'':9}"
        cell = [format(v, fmt) if isinstance(v, (int, float)) else "n/a" for v in (a, b)]
        lines.append(f"{label:24}{cell[0]:>13}{cell[1]:>13}{ratio}")

    row("FLOPs", before["flops"], after["flops"], ",")
    row("params", before["params"], after["params"], ",")
    row("test accuracy", before.get("test_accuracy"), after.get("test_accuracy"), ".4f")
    failures = []
    for kind in ("float32", "int8"):
        exports = [side.get("tflite", {}).get(kind) for side in (before, after)]
        if not any(exports):
            continue
        exports = [e or {} for e in exports]
        failures += [f"{label} {kind}: {e['error']}" for label, e in
                     zip(("unpruned", "stripped"), exports) if "error" in e]
        sizes = [e["size_bytes"] / 1024 if "size_bytes" in e else None for e in exports]
        row(f"TFLite {kind} KiB", *sizes, ".1f")
        times = [e["latency"]["median_ms"] if "latency" in e else None for e in exports]
        row(f"TFLite {kind} ms", *times, ".3f")
        predicted = [e.get("latency", {}).get("predicted_ms") for e in exports]
        if any(v is not None for v in predicted):
            row("  predicted ms", *predicted, ".3f")
    if failures:
        lines.append("export failures (n/a above):")
        lines += [f"  {failure}" for failure in failures]
    phases = epoch_phases(report.get("history", []))
    if phases:
        lines.append("-" * 59)
        lines.append("epochs (phase at epoch end): " + ", ".join(
            f"{name} {span['epochs']} ({span['seconds']:.0f} s)" for name, span in phases.items()))
    if "budget_status" in report:
        lines.append(budget_line(report["budget_status"]))
    elif "admm_iterations" in report:
        lines.append(f"ADMM iterations: {report['admm_iterations']}")
    if report.get("timings_s"):
        lines.append("time (s): " + ", ".join(f"{k} {v:.0f}"
                                             for k, v in report["timings_s"].items()))
    return "\n".join(lines)


def budget_line(status: dict) -> str:
    """One line saying whether and when the budget was met, from a run's budget status.

    Example:
        >>> print(budget_line({"met": True, "frozen_by": "allocation", "admm_iterations": 67,
        ...                    "epoch": 2, "hard": {"flops": 0.48}, "budget": {"flops": 0.5}}))
        budget met by the allocation after 67 ADMM iterations (epoch 2): flops 0.4800 <= 0.5000
    """
    resources = ", ".join(f"{name} {status['hard'][name]:.4f} "
                          f"{'<=' if status['hard'][name] <= value else '>'} {value:.4f}"
                          for name, value in status["budget"].items())
    when = f" (epoch {status['epoch']})" if status.get("epoch") else ""
    iterations = f"after {status['admm_iterations']} ADMM iterations{when}"
    if status["frozen_by"] == "allocation":
        return f"budget met by the allocation {iterations}: {resources}"
    if status["frozen_by"] == "assignment":
        return f"budget met by the given allocation: {resources}"
    if status["frozen_by"] == "completion":
        return (f"budget NOT met by the allocation in time: completed {iterations} by lowering "
                f"every keep ratio together (see the warning in the log): {resources}")
    return f"budget NOT met: the allocation is unfinished {iterations}: {resources}"


def epoch_phases(history: list[dict]) -> dict[str, dict]:
    """The epochs each DSA phase ran in, from history rows: ``{"allocation": {"epochs": "2-4",
    "seconds": 310.0}, ...}`` (1-based epochs; seconds from the rows' ``epoch_seconds``).

    Example:
        >>> epoch_phases([{"epoch": 0, "dsa_phase": 0, "epoch_seconds": 10.0},
        ...               {"epoch": 1, "dsa_phase": 1, "epoch_seconds": 20.0},
        ...               {"epoch": 2, "dsa_phase": 1, "epoch_seconds": 21.0}])["allocation"]
        {'epochs': '2-3', 'seconds': 41.0}
    """
    epochs: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    for row in history:
        if row.get("dsa_phase") is None:
            continue
        name = PHASES[int(row["dsa_phase"])]
        epochs.setdefault(name, []).append(int(row["epoch"]) + 1)
        seconds[name] = seconds.get(name, 0.0) + float(row.get("epoch_seconds") or 0.0)
    return {name: {"epochs": f"{min(e)}-{max(e)}" if len(e) > 1 else str(e[0]),
                   "seconds": round(seconds[name], 1)}
            for name, e in epochs.items()}


def plot_allocation(report: dict, path: str) -> None:
    """Draws, per pruned group in network order, the channels before and after and, below,
    the keep ratio beside the group's share of the budgeted resource, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = report["allocation"]
    positions = range(len(rows))
    resource = report["config"].get("resource", "flops")
    figure, (axes, lower) = plt.subplots(
        2, 1, figsize=(max(6.0, 0.35 * len(rows) + 2), 6.5), sharex=True,
        gridspec_kw={"height_ratios": [3, 2]})
    axes.bar(positions, [r["channels"] for r in rows], color="#c6dbef", label="unpruned")
    axes.bar(positions, [r["kept"] for r in rows], color="#2171b5", label="kept")
    axes.set_ylabel("channels")
    config, after = report["config"], report["stripped"]
    accuracy = ""
    if "test_accuracy" in after and report["unpruned"].get("test_accuracy") is not None:
        accuracy = (f"\ntest accuracy {after['test_accuracy']:.2%} (unpruned "
                    f"{report['unpruned']['test_accuracy']:.2%})")
    axes.set_title(f"{config['model']}: {after['flops_ratio']:.1%} of the FLOPs, "
                   f"{after['params_ratio']:.1%} of the params{accuracy}")
    axes.legend()
    lower.bar(positions, [r["kept"] / r["channels"] for r in rows], color="#2171b5",
              label="kept fraction")
    if f"{resource}_share" in rows[0]:
        shares = [r[f"{resource}_share"] for r in rows]
        lower.plot(positions, [share / max(shares) for share in shares], "o", color="#cb181d",
                   label=f"{resource} share (largest = 1)")
    lower.set_ylim(0, 1.05)
    lower.legend(fontsize=7)
    lower.set_xticks(list(positions))
    lower.set_xticklabels([r["group"] for r in rows], rotation=90, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_trace(rows: list[dict], path: str) -> None:
    """Draws every group's keep ratio over the ADMM iterations (rows of
    ``keep_ratio_trace.csv``: ``iteration`` and one column per group), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = [name for name in rows[0] if name != "iteration"]
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    iterations = [row["iteration"] for row in rows]
    for name in groups:
        axes.plot(iterations, [row[name] for row in rows], linewidth=1, label=name)
    axes.set_xlabel("ADMM iteration")
    axes.set_ylabel("keep ratio")
    axes.set_ylim(0, 1.02)
    if len(groups) <= 20:
        axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
