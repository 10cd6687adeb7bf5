r"""Generated images and list files in the layout of a paper dataset, for timing smoke runs.

  python -m experiments.smoke_images --dataset=imagenet100 --out=/tmp/smoke/imagenet100 \
      [--train=640 --test=120 --database=240]
  python -m orthohash_jax.main --config=configs/imagenet100.py:small --workdir=/tmp/smoke/run \
      --config.data_dir=/tmp/smoke/imagenet100 --config.num_epochs=1

Writes ``images/SPLIT_NNNNN.{jpg,png}`` (256x256, JPEG and PNG alternating; the synthetic scenes
of ``experiments.bench_input``) and train.txt / test.txt / database.txt with the dataset's
number of label columns (``listfile.DATASET_INFO``): one-hot rows for ImageNet100; for the
multi-label NUS-WIDE and MS-COCO, every other row with a second label. The defaults are 1,000
images: 640 training images (20 steps of the small variant's batch 32), 120 queries, a
240-image database. Labels are random, so the mAP of a run on them means nothing.
"""
import os

import numpy as np

from experiments import bench_input
from orthohash_jax import cli
from orthohash_jax.data import listfile


def label_rows(rng, n, num_classes, multilabel):
  """uint8 (n, C): one random class per row; multi-label: a second one on every other row."""
  rows = np.zeros((n, num_classes), np.uint8)
  rows[np.arange(n), rng.integers(0, num_classes, n)] = 1
  if multilabel:
    rows[np.arange(0, n, 2), rng.integers(0, num_classes, (n + 1) // 2)] = 1
  return rows


def write(dataset, out, sizes, seed=0):
  """Writes the images and list files of ``sizes`` {split: n} under ``out``; returns a line."""
  info = listfile.DATASET_INFO[dataset]
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  jobs = []
  for split, n in sizes.items():
    filename = listfile.SPLIT_FILES[split]
    names = [f"images/{filename[:-4]}_{i:05d}.{'png' if i % 2 else 'jpg'}" for i in range(n)]
    rows = label_rows(rng, n, info["num_classes"], info["multilabel"])
    with open(os.path.join(out, filename), "w", encoding="utf-8") as f:
      f.writelines(f"{name} {' '.join(map(str, row))}\n" for name, row in zip(names, rows))
    jobs += [(os.path.join(out, name), [seed, len(jobs) + i]) for i, name in enumerate(names)]
  bench_input.write_images(*zip(*jobs))
  return f"{out}: {len(jobs)} images, " + ", ".join(
      f"{listfile.SPLIT_FILES[s]} {n}" for s, n in sizes.items())


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", required=True, choices=sorted(listfile.DATASET_INFO))
  parser.add_argument("--out", required=True, help="directory to write (the run's data_dir)")
  parser.add_argument("--train", type=int, default=640)
  parser.add_argument("--test", type=int, default=120)
  parser.add_argument("--database", type=int, default=240)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name in ("train", "test", "database"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  sizes = {"train": args.train, "query": args.test, "db": args.database}
  return cli.run_tool(lambda: cli.say(write(args.dataset, args.out, sizes, args.seed)))


if __name__ == "__main__":
  raise SystemExit(main())
