"""Figures of a run's codes, drawn with matplotlib's object API (no pyplot: no global state, safe
in threads and without a display).

* ``distance_histograms(q_codes, db_codes, q_labels, db_labels)``: counts int64 (K + 1,) of the
  Hamming distances of all query-database pairs, (intra, inter): intra = relevant pairs (same
  class, or a shared label for multi-hot labels), inter = the others. Codes are packed uint32
  (as ``retrieval``) or real (n, K); counted on the device in blocks of queries, so the host
  holds O(bins) per block, never (Q, N) (``metrics.pair_distance_counts``).
* ``separability(intra, inter)``: E[D_inter] - E[D_intra] of those counts. This is the one
  separability of the project's plots: the histogram's arrow, ``analysis.json`` and Figure 4
  of ``experiments/plot_analysis.py`` all use query-database pairs.
* ``histogram_figure(intra, inter, num_bits)``: paper Figure 3, each histogram normalised to
  sum 1, dashed lines at the means, an arrow between them labelled with the separability above
  the tallest bar, the legend below the axes (never over a bar).
  ``histograms_figure(panels)``: the same for several runs, one panel each, side by side.
* ``retrieval_figure(query_pictures, neighbour_pictures, ...)``: a grid, one row per query:
  the query, then its neighbours in rank order, each framed green (relevant) or red (not), its
  Hamming distance above and its label below; the row's precision under the query.
* ``png(fig)``: PNG bytes of a figure.
"""
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orthohash_jax import cli, metrics

RELEVANT, IRRELEVANT, QUERY = "#2ca02c", "#d62728", "#1f4e99"  # frame colours


def distance_histograms(q_codes, db_codes, q_labels, db_labels):
  """(intra, inter) counts int64 (K_max + 1,) over all query-database pairs; K_max = 32 W
  (``metrics.pair_distance_counts``: counted on the device, O(bins) host memory)."""
  return metrics.pair_distance_counts(q_codes, db_codes, q_labels, db_labels)


def _mean(counts) -> float:
  return float(np.arange(len(counts)) @ counts / counts.sum())


def separability(intra, inter) -> float:
  """E[D_inter] - E[D_intra] of two distance histograms (counts)."""
  if not intra.sum() or not inter.sum():
    raise ValueError("separability needs both relevant and irrelevant query-database pairs")
  return _mean(inter) - _mean(intra)


def histogram_figure(intra, inter, num_bits: int) -> Figure:
  """Figure 3 of distance counts (see the module docstring)."""
  return histograms_figure([(f"Query-database Hamming distances ({num_bits} bits)", intra, inter,
                             num_bits)])


def histograms_figure(panels) -> Figure:
  """Figure 3 of several runs side by side: one panel per (title, intra, inter, num_bits), each
  drawn as ``histogram_figure``'s."""
  fig = Figure(figsize=(6 * len(panels), 4))
  for ax, (title, intra, inter, num_bits) in zip(fig.subplots(1, len(panels), squeeze=False)[0],
                                                 panels):
    _draw_histogram(ax, intra, inter, num_bits, title)
  fig.tight_layout()
  return fig


def _draw_histogram(ax, intra, inter, num_bits: int, title: str) -> None:
  means = {}
  for name, counts, colour in (("intra-class", intra, "tab:blue"),
                               ("inter-class", inter, "tab:orange")):
    counts = counts[:num_bits + 1]
    ax.bar(np.arange(num_bits + 1), counts / counts.sum(), width=1.0, alpha=0.5, color=colour,
           label=f"{name} ({counts.sum()} pairs)")
    means[name] = _mean(counts)
    ax.axvline(means[name], color=colour, linestyle="--")
  top = 1.25 * max(c[:num_bits + 1].max() / c.sum() for c in (intra, inter))
  ax.set_ylim(0, top)  # the arrow and its label above the tallest bar
  ax.annotate("", xy=(means["inter-class"], 0.9 * top), xytext=(means["intra-class"], 0.9 * top),
              arrowprops={"arrowstyle": "<->", "color": "black"})
  ax.text((means["intra-class"] + means["inter-class"]) / 2, 0.92 * top,
          f"separability {separability(intra, inter):.2f}", ha="center")
  ax.set(xlabel="Hamming distance", ylabel="fraction of pairs", xlim=(-0.5, num_bits + 0.5),
         title=title)
  # below the axes: inside, it would cover the bars of a distribution that lies under it
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _show(ax, picture, colour, width):
  ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_edgecolor(colour)
    spine.set_linewidth(width)


def retrieval_figure(query_pictures, neighbour_pictures, distances, relevant, query_ids,
                     query_labels, neighbour_labels, title: str) -> Figure:
  """The grid of ``query_pictures`` uint8 (Q, H, W[, 3]) and ``neighbour_pictures`` (Q, k, H,
  W[, 3]) with ``distances`` int (Q, k), ``relevant`` bool (Q, k), ``query_ids`` (Q,) (row
  numbers in the query set) and labels (Q[, C]) / (Q, k[, C])."""
  num_queries, k = np.shape(distances)
  fig = Figure(figsize=(1.15 * (k + 1) + 0.3, 1.6 * num_queries + 0.8), layout="constrained")
  axes = np.asarray(fig.subplots(num_queries, k + 1, squeeze=False))
  for row in range(num_queries):
    ax = axes[row, 0]
    _show(ax, query_pictures[row], QUERY, 4)
    ax.set_title(f"query {query_ids[row]}", fontsize=9, color=QUERY, fontweight="bold")
    ax.set_xlabel(f"label {cli.label_text(query_labels[row])}\n"
                  f"P@{k} {np.mean(relevant[row]):.2f}", fontsize=8)
    for col in range(k):
      ax = axes[row, col + 1]
      colour = RELEVANT if relevant[row, col] else IRRELEVANT
      _show(ax, neighbour_pictures[row, col], colour, 4)
      ax.set_title(f"d={distances[row, col]}", fontsize=9)
      ax.set_xlabel(cli.label_text(neighbour_labels[row, col]), fontsize=8, color=colour)
  fig.suptitle(f"{title}\nframes: blue = query, green = relevant, red = not relevant; "
               "d = Hamming distance, ranks left to right", fontsize=10)
  return fig


def png(fig: Figure, dpi: int = 100) -> bytes:
  buf = io.BytesIO()
  FigureCanvasAgg(fig)
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()
