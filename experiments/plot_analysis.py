r"""Analysis plots of a run (paper Figures 3 and 4, and the PR curve), written as PNGs.

  # from a finished run: hamming_histogram.png, pr_curve.png and retrieval.png from
  # <workdir>/codes.npz (pictures through the run's data, read with its config.json)
  python -m experiments.plot_analysis --workdir=runs/digits --out=runs/digits/plots

  # Figure 3 of several finished runs side by side, a panel each (hamming_histograms.png; the
  # means and separability of each in histograms.json)
  python -m experiments.plot_analysis --workdirs=runs/a,runs/b,runs/c \
      --labels=OrthoCos+BN,HashNet,GreedyHash --out=runs/figure3

  # train a config as a run in <out>/run (checkpoints every N epochs kept), then mAP and the
  # Figure-4 metrics of the initial state and of each checkpoint (analysis.json, figure4.png)
  # and the three plots above from the run's codes.npz
  python -m experiments.plot_analysis --config=configs/digits.py --every_epochs=5 \
      --out=runs/digits_analysis --set num_epochs=50

* Histogram (Figure 3): Hamming distances of all query-database pairs, intra-class (relevant:
  same class / a shared label) and inter-class, each normalised to sum 1; dashed lines at the two
  means and an arrow between them labelled with the separability E[D_inter] - E[D_intra].
* PR curve: ``metrics.precision_recall_curve`` (retrieved = within Hamming radius r = 0..K).
* Figure 4 (single-label data): over training, mAP (blue, solid, left axis) against the
  quantization angle, the separability and the orthogonality ``metrics.*`` of the database codes
  (orange, dotted, right axis); the separability is that of the query-database pairs, as in
  the histogram (``plots.separability``).
* Retrieval grid (``retrieval.png``, image inputs: digits, Fashion-MNIST, list files read
  through ``data.eval_rows``): one query per class (at most ``--num_queries``), its top
  ``--k`` by (Hamming distance, index) framed green (relevant) or red (not), with distances.
"""
import json
import os
import sys

import numpy as np
import orbax.checkpoint as ocp
from matplotlib.figure import Figure

from orthohash_jax import data as data_lib
from orthohash_jax import workdir as workdir_lib
from orthohash_jax import (checkpoint, cli, codes_file, config_base, evaluation, images, metrics,
                           plots, retrieval, run)


def plot_histogram(codes: dict, path: str) -> dict:
  """Figure 3 from packed codes (``codes_file.load_codes`` keys) to ``path``; returns the two
  means and the separability."""
  intra, inter = distance_histograms(codes)
  save(plots.histogram_figure(intra, inter, codes["num_bits"]), path)
  return histogram_means(intra, inter)


def plot_histograms(codes_by_label: dict, path: str) -> dict:
  """Figure 3 of several runs side by side ({label: packed codes}, a panel each, in order) to
  ``path``; returns {label: ``histogram_means``}."""
  panels, means = [], {}
  for label, codes in codes_by_label.items():
    intra, inter = distance_histograms(codes)
    panels.append((f"{label} ({codes['num_bits']} bits)", intra, inter, codes["num_bits"]))
    means[label] = histogram_means(intra, inter)
  save(plots.histograms_figure(panels), path)
  return means


def distance_histograms(codes: dict):
  """``plots.distance_histograms`` of packed codes (``codes_file.load_codes`` keys)."""
  return plots.distance_histograms(codes["query_codes"], codes["db_codes"], codes["query_labels"],
                                   codes["db_labels"])


def histogram_means(intra, inter) -> dict:
  """The mean intra- and inter-class distances of two histograms and their separability."""
  values = np.arange(len(intra))
  return {"intra-class": float(values @ intra / intra.sum()),
          "inter-class": float(values @ inter / inter.sum()),
          "separability": plots.separability(intra, inter)}


def save(fig, path: str) -> None:
  with open(path, "wb") as f:
    f.write(plots.png(fig))


def pick_queries(labels, n: int) -> np.ndarray:
  """Row numbers of up to n queries: single-label, the first query of each class (classes in
  ascending order); multi-label, n rows evenly spaced over the query set."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    classes, first = np.unique(labels, return_index=True)
    return first[np.argsort(classes)][:n]
  return np.unique(np.linspace(0, len(labels) - 1, n).round().astype(int))


def plot_retrieval(codes: dict, data, path: str, num_queries: int = 8, k: int = 10) -> dict:
  """The retrieval grid: ``pick_queries`` and their top k (by (Hamming distance, index), as
  ``python -m orthohash_jax.search``), pictures from ``data.eval_rows``; returns the rows shown
  ({"queries", "indices", "distances", "relevant"})."""
  images.check_pictures(data.input_shape, data.input_dtype)
  queries = pick_queries(codes["query_labels"], num_queries)
  dist, idx = (np.asarray(a) for a in retrieval.hamming_topk(
      codes["query_codes"][queries], codes["db_codes"], k))
  q_labels, db_labels = codes["query_labels"][queries], codes["db_labels"][idx]
  relevant = metrics.relevance(q_labels, codes["db_labels"], idx)
  pictures = images.to_pictures(data.eval_rows("db", idx.reshape(-1)))
  fig = plots.retrieval_figure(
      images.to_pictures(data.eval_rows("query", queries)),
      pictures.reshape(idx.shape + pictures.shape[1:]), dist, relevant, queries, q_labels,
      db_labels, f"{data.name}, {codes['num_bits']} bits: top {k} of the database")
  save(fig, path)
  return {"queries": queries, "indices": idx, "distances": dist, "relevant": relevant}


def plot_pr(codes: dict, path: str) -> dict:
  """Precision-recall curve over Hamming radii; returns ``metrics.precision_recall_curve``."""
  pr = metrics.precision_recall_curve(codes["query_codes"], codes["db_codes"],
                                      codes["query_labels"], codes["db_labels"])
  save(pr_figure(pr, codes["num_bits"]), path)
  return pr


def pr_figure(pr: dict, num_bits: int) -> Figure:
  """The PR curve of ``metrics.precision_recall_curve``, radii 0, 2 and K/4 marked; the axes fit
  the curve's points (with a margin), not [0, 1]: a curve near the top right fills the plot."""
  fig = Figure(figsize=(5, 4))
  ax = fig.subplots()
  ax.plot(pr["recall"], pr["precision"], marker=".")
  ax.margins(0.08)
  for n, r in enumerate((0, 2, num_bits // 4)):
    if np.isfinite(pr["precision"][r]):
      ax.annotate(f"r={r}", (pr["recall"][r], pr["precision"][r]), textcoords="offset points",
                  xytext=(12, -15 * (n + 1)), arrowprops={"arrowstyle": "-", "color": "gray"})
  ax.set(xlabel="recall", ylabel="precision",
         title=f"PR by Hamming radius ({num_bits} bits)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def analysis_record(trainer, data, state, epoch) -> dict:
  """mAP (as the run's evaluation) and the Figure-4 metrics of one state: quantization angle and
  orthogonality of the database codes, separability of the query-database pairs (the
  histogram's)."""
  q_codes = evaluation.encode_split(trainer, data, state, "query")
  db_codes = evaluation.encode_split(trainer, data, state, "db")
  q_packed, db_packed = retrieval.as_packed(q_codes), retrieval.as_packed(db_codes)
  q_labels, db_labels = data.labels("query"), data.labels("db")
  intra, inter = plots.distance_histograms(q_packed, db_packed, q_labels, db_labels)
  return {"epoch": epoch,
          "mAP": metrics.mean_average_precision(q_packed, db_packed, q_labels, db_labels,
                                                trainer.config.eval_topk),
          "quantization_angle": metrics.quantization_angle(db_codes),
          "separability": plots.separability(intra, inter),
          "orthogonality": metrics.orthogonality(db_codes, db_labels)}


def train_with_analysis(config, workdir: str, every_epochs: int) -> list:
  """Trains ``config`` with ``run.train_and_evaluate`` in ``workdir``, keeping a checkpoint every
  ``every_epochs`` epochs (rounded up to whole chunks) and the last; returns the records
  (``analysis_record``) of the initial state (epoch 0) and of each kept checkpoint."""
  data = data_lib.load(config)
  try:
    if data.multilabel or data.protocol != "category":
      raise ValueError("the Figure-4 metrics need single-label category data")
    steps_per_epoch = run.step_counts(config, data)[0]
  finally:
    data.close()
  config.checkpoint_every_steps = every_epochs * steps_per_epoch
  config.keep_checkpoints = config.num_epochs // every_epochs + 1
  run.train_and_evaluate(config, workdir)
  trainer, data, _, _ = run.restore_run(workdir)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  try:
    records = [analysis_record(trainer, data, trainer.initial_state(), 0)]
    print(json.dumps(records[-1]), flush=True)  # the initial state's (epoch 0) scores too
    for step in sorted(ckpt.manager.all_steps()):
      state = ckpt.manager.restore(step, args=ocp.args.StandardRestore(trainer.abstract_state()))
      epoch = step // steps_per_epoch if step % steps_per_epoch == 0 else step / steps_per_epoch
      records.append(analysis_record(trainer, data, state, epoch))
      print(json.dumps(records[-1]), flush=True)
  finally:
    ckpt.close()
    data.close()
  return records


FIGURE4 = (("quantization_angle", "quantization angle (deg)"),
           ("separability", "separability E[D_inter] - E[D_intra]\n(query-database pairs)"),
           ("orthogonality", "||H H^T / K - I||_F"))


def plot_figure4(records, path: str) -> None:
  """Three panels: mAP (solid, left) and one analysis metric (dotted, right) against epochs."""
  epochs = [r["epoch"] for r in records]
  fig = Figure(figsize=(14, 3.8))
  axes = fig.subplots(1, 3)
  for ax, (key, label) in zip(axes, FIGURE4):
    ax.plot(epochs, [r["mAP"] for r in records], color="tab:blue", marker="o", label="mAP")
    ax.set(xlabel="epoch", ylabel="mAP", title=label)
    right = ax.twinx()
    right.plot(epochs, [r[key] for r in records], color="tab:orange", linestyle=":", marker="s",
               label=key)
    right.set_ylabel(label)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], loc="center right")
  fig.tight_layout()
  save(fig, path)


def compare_histograms(workdirs: str, labels, out: str) -> dict:
  """Figure 3 of the comma-separated finished runs ``workdirs`` side by side, titled by the
  comma-separated ``labels`` (default: the workdirs' names), to ``out``/hamming_histograms.png,
  their means to ``out``/histograms.json; returns those means ({label: ``histogram_means``})."""
  workdirs = workdirs.split(",")
  labels = (labels.split(",") if labels is not None
            else [os.path.basename(os.path.normpath(w)) for w in workdirs])
  if len(labels) != len(workdirs):
    raise ValueError(f"--labels has {len(labels)} names for {len(workdirs)} --workdirs")
  if len(set(labels)) != len(labels) or not all(labels) or not all(workdirs):
    raise ValueError(f"--workdirs and --labels need distinct non-empty names, got {labels}")
  codes = {label: codes_file.load_codes(workdir_lib.path(w, workdir_lib.CODES))
           for label, w in zip(labels, workdirs)}
  means = plot_histograms(codes, os.path.join(out, "hamming_histograms.png"))
  with open(os.path.join(out, "histograms.json"), "w") as f:
    json.dump(means, f, indent=2)
  return means


def load_run_data(workdir: str):
  """The input interface of a finished run's data (its ``config.json``)."""
  return data_lib.load(workdir_lib.read_config(workdir))


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a finished run (reads codes.npz)")
  source.add_argument("--config", help="train this config in <out>/run and plot the Figure-4 "
                      "metrics of its checkpoints")
  source.add_argument("--workdirs", help="finished runs, comma-separated: their Figure 3 side by "
                      "side (hamming_histograms.png, histograms.json)")
  parser.add_argument("--labels", help="with --workdirs: the panels' titles, comma-separated "
                      "(default: the workdirs' names)")
  parser.add_argument("--every_epochs", type=int, default=5)
  parser.add_argument("--num_queries", type=int, default=8, help="rows of the retrieval grid")
  parser.add_argument("--k", type=int, default=10, help="neighbours per row of the grid")
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  if args.labels is not None and not args.workdirs:
    parser.error("--labels goes with --workdirs")
  data, written = None, []
  out = lambda name: written.append(os.path.join(args.out, name)) or written[-1]
  try:
    if args.num_queries < 1 or args.k < 1:
      raise ValueError(f"--num_queries and --k must be positive, got {args.num_queries}, {args.k}")
    os.makedirs(args.out, exist_ok=True)
    if args.workdirs:
      for label, means in compare_histograms(args.workdirs, args.labels, args.out).items():
        print(f"{label}: {json.dumps(means)}")
      print(f"wrote {out('hamming_histograms.png')} and {out('histograms.json')}")
      return 0
    workdir = args.workdir
    if args.config:
      if args.every_epochs < 1:
        raise ValueError(f"--every_epochs must be positive, got {args.every_epochs}")
      config = config_base.load_config_file(args.config)
      config_base.apply_overrides(config, args.set)
      workdir = os.path.join(args.out, "run")
      records = train_with_analysis(config, workdir, args.every_epochs)
      with open(out("analysis.json"), "w") as f:
        json.dump(records, f, indent=2)
      plot_figure4(records, out("figure4.png"))
    codes = codes_file.load_codes(workdir_lib.path(workdir, workdir_lib.CODES))
    data = load_run_data(workdir)
    plot_histogram(codes, out("hamming_histogram.png"))
    plot_pr(codes, out("pr_curve.png"))
    try:
      images.check_pictures(data.input_shape, data.input_dtype)
    except ValueError as e:
      print(f"no retrieval grid: {e}")
    else:
      plot_retrieval(codes, data, out("retrieval.png"), args.num_queries,
                     min(args.k, len(codes["db_codes"])))
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    if data is not None:
      data.close()
  print(f"wrote {', '.join(written)}"
        + (f" and the run in {os.path.join(args.out, 'run')}" if args.config else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
