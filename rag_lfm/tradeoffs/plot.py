"""Pareto plots of a tuning run: memory vs recall and latency vs recall (PNG, matplotlib).

matplotlib is optional: ``pip install "rag-lfm[plot]"``.
"""

from __future__ import annotations

from typing import Any

from rag_lfm.errors import ConfigError


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and recall (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(result: Any, path: str, title: str | None = None) -> str:
    """Write the two-panel Pareto plot of ``result`` (a TuneResult) to ``path``; returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError as exc:
        raise ConfigError(f"plots need matplotlib ({exc}); install it with: pip install \"rag-lfm[plot]\"") from None
    ok = [t for t in result.trials if t.status == "ok"]
    if not ok:
        raise ConfigError("nothing was measured, so there is nothing to plot; widen the memory budget or the families")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    panels = [("bytes per vector (resident)", lambda t: t.bytes_per_vector, result.max_memory / max(1, result.n)),
              ("p50 latency, one query (ms)", lambda t: t.p50_ms, result.max_p50_ms)]
    families = sorted({t.family for t in ok})
    cmap = plt.get_cmap("tab20")
    for ax, (xlabel, cost, limit) in zip(axes, panels):
        for j, fam in enumerate(families):
            pts = [t for t in ok if t.family == fam]
            ax.scatter([cost(t) for t in pts], [t.recall for t in pts], s=18, color=cmap(j % 20), label=fam, alpha=0.8)
        front = pareto_front([(cost(t), t.recall) for t in ok])
        ax.plot([cost(ok[i]) for i in front], [ok[i].recall for i in front], "k-", lw=1, alpha=0.6, label="Pareto front")
        ax.axhline(result.min_recall, color="tab:red", ls="--", lw=0.8)
        if limit and limit <= 10 * max(cost(t) for t in ok):  # a budget far off the data would only squash the plot
            ax.axvline(limit, color="tab:red", ls=":", lw=0.8)
        pick = result.choice or result.closest
        if pick is not None:
            ax.scatter([cost(pick)], [pick.recall], s=120, facecolors="none", edgecolors="k", lw=1.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"recall@{result.k}")
        ax.grid(True, which="both", alpha=0.25)
    axes[1].legend(fontsize=6, loc="lower right", ncol=2)
    budget = f"budget {result.max_memory / 1e6:,.0f} MB, " if result.max_memory < 1e12 else ""
    fig.suptitle(title or f"{result.n:,} vectors x {result.dim}, {result.n_queries} {result.queries} queries; "
                 f"{budget}recall >= {result.min_recall}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
