r"""Analysis plots of a run (paper Figures 3 and 4, and the PR curve), written as PNGs.

  # from a finished run: hamming_histogram.png and pr_curve.png from <workdir>/codes.npz
  python experiments/plot_analysis.py --workdir=runs/digits --out=runs/digits/plots

  # train a config, recording mAP and the Figure-4 metrics every N epochs (analysis.json,
  # figure4.png), then the two plots above from the final codes
  python experiments/plot_analysis.py --config=configs/digits.py --every_epochs=5 \
      --out=runs/digits_analysis --set num_epochs=50

* Histogram (Figure 3): Hamming distances of all query-database pairs, intra-class (relevant:
  same class / a shared label) and inter-class, each normalised to sum 1; dashed lines at the two
  means and an arrow between them labelled with the separability E[D_inter] - E[D_intra].
* PR curve: ``metrics.precision_recall_curve`` (retrieved = within Hamming radius r = 0..K).
* Figure 4 (single-label data): over training, mAP (blue, solid, left axis) against the
  quantization angle, the separability and the orthogonality ``metrics.*`` of the database codes
  (orange, dotted, right axis); separability on at most ``--max_items`` database items.
"""
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from orthohash_jax import data as data_lib
from orthohash_jax import cli, codes_file, config_base, evaluation, metrics, parallel, retrieval, run


def pair_distances(q_codes, db_codes, q_labels, db_labels):
  """Hamming distances of all (query, database) pairs: (intra int (n,), inter int (m,))."""
  q_labels, db_labels, multilabel = metrics.check_labels(q_labels, db_labels, len(q_codes),
                                                         len(db_codes))
  dist = np.asarray(retrieval.hamming_distance(q_codes, db_codes))
  rel = metrics.relevance(q_labels, db_labels, multilabel)
  return dist[rel], dist[~rel]


def plot_histogram(codes: dict, path: str) -> dict:
  """Figure 3 from packed codes (``codes_file.load_codes`` keys); returns the two means."""
  intra, inter = pair_distances(codes["query_codes"], codes["db_codes"], codes["query_labels"],
                                codes["db_labels"])
  k = codes["num_bits"]
  fig, ax = plt.subplots(figsize=(6, 4))
  means = {}
  for name, d, colour in (("intra-class", intra, "tab:blue"), ("inter-class", inter, "tab:orange")):
    ax.bar(np.arange(k + 1), np.bincount(d, minlength=k + 1) / len(d), width=1.0, alpha=0.5,
           color=colour, label=f"{name} ({len(d)} pairs)")
    means[name] = float(d.mean())
    ax.axvline(means[name], color=colour, linestyle="--")
  top = ax.get_ylim()[1]
  ax.annotate("", xy=(means["inter-class"], 0.9 * top), xytext=(means["intra-class"], 0.9 * top),
              arrowprops={"arrowstyle": "<->", "color": "black"})
  ax.text((means["intra-class"] + means["inter-class"]) / 2, 0.92 * top,
          f"separability {means['inter-class'] - means['intra-class']:.2f}", ha="center")
  ax.set(xlabel="Hamming distance", ylabel="fraction of pairs", xlim=(-0.5, k + 0.5),
         title=f"Query-database Hamming distances ({k} bits)")
  ax.legend(loc="center right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return means


def plot_pr(codes: dict, path: str) -> dict:
  """Precision-recall curve over Hamming radii; returns ``metrics.precision_recall_curve``."""
  pr = metrics.precision_recall_curve(codes["query_codes"], codes["db_codes"],
                                      codes["query_labels"], codes["db_labels"])
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.plot(pr["recall"], pr["precision"], marker=".")
  for n, r in enumerate((0, 2, codes["num_bits"] // 4)):
    if np.isfinite(pr["precision"][r]):
      ax.annotate(f"r={r}", (pr["recall"][r], pr["precision"][r]), textcoords="offset points",
                  xytext=(-40, -15 * (n + 1)), arrowprops={"arrowstyle": "-", "color": "gray"})
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
         title=f"PR by Hamming radius ({codes['num_bits']} bits)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pr


def analysis_record(trainer, data, state, epoch: int, max_items: int) -> dict:
  """mAP and the Figure-4 metrics of the database codes at one point of training."""
  db_codes = evaluation.encode_split(trainer, data, state, "db")
  sub = np.random.default_rng(0).permutation(len(db_codes))[:max_items]
  return {"epoch": epoch, "mAP": evaluation.evaluate(trainer, data, state)["mAP"],
          "quantization_angle": metrics.quantization_angle(db_codes),
          "separability": metrics.separability(db_codes[sub], data.db_y[sub]),
          "orthogonality": metrics.orthogonality(db_codes, data.db_y)}


def train_with_analysis(config, every_epochs: int, max_items: int = 2000):
  """Trains ``config`` from scratch, one compiled epoch at a time; returns (records, trainer,
  data, final state), a record at epoch 0 and every ``every_epochs`` (and the last) epoch."""
  data = data_lib.load(config)
  if data.multilabel:
    raise ValueError("the Figure-4 metrics need single-label data")
  trainer = run.make_trainer(config, data, parallel.make_mesh(config.num_devices))
  steps_per_epoch = run.training_steps(config, data)[0]
  state = trainer.initial_state()
  records = [analysis_record(trainer, data, state, 0, max_items)]
  for epoch in range(1, config.num_epochs + 1):
    state, _ = run.train_steps(trainer, data, state, (epoch - 1) * steps_per_epoch,
                               epoch * steps_per_epoch)
    if epoch % every_epochs == 0 or epoch == config.num_epochs:
      records.append(analysis_record(trainer, data, state, epoch, max_items))
      print(json.dumps(records[-1]), flush=True)
  return records, trainer, data, state


FIGURE4 = (("quantization_angle", "quantization angle (deg)"),
           ("separability", "E[D_inter] - E[D_intra]"),
           ("orthogonality", "||H H^T / K - I||_F"))


def plot_figure4(records, path: str) -> None:
  """Three panels: mAP (solid, left) and one analysis metric (dotted, right) against epochs."""
  epochs = [r["epoch"] for r in records]
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
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
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a finished run (reads codes.npz)")
  source.add_argument("--config", help="train this config recording the Figure-4 metrics")
  parser.add_argument("--every_epochs", type=int, default=5)
  parser.add_argument("--max_items", type=int, default=2000)
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  try:
    os.makedirs(args.out, exist_ok=True)
    if args.workdir:
      codes = codes_file.load_codes(os.path.join(args.workdir, "codes.npz"))
    else:
      if args.every_epochs < 1:
        raise ValueError(f"--every_epochs must be positive, got {args.every_epochs}")
      config = config_base.load_config_file(args.config)
      config_base.apply_overrides(config, args.set)
      records, trainer, data, state = train_with_analysis(config, args.every_epochs, args.max_items)
      with open(os.path.join(args.out, "analysis.json"), "w") as f:
        json.dump(records, f, indent=2)
      plot_figure4(records, os.path.join(args.out, "figure4.png"))
      result = evaluation.evaluate(trainer, data, state)
      codes = {**result, "num_bits": config.num_bits}
    plot_histogram(codes, os.path.join(args.out, "hamming_histogram.png"))
    plot_pr(codes, os.path.join(args.out, "pr_curve.png"))
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote plots to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
