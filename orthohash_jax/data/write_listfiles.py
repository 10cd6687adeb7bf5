r"""Writes a dataset as image files plus hashing list files (train.txt, test.txt, database.txt).

  python -m orthohash_jax.data.write_listfiles --dataset=fashion_mnist --output=DIR \
      [--data_dir=IDX_DIR] [--num_query_per_class=100 --num_train_per_class=500 --split_seed=0]

Fashion-MNIST: the IDX files are split with our protocol (``idx.read_protocol``); every image
of the merged 70,000 used by a split is written once as an 8-bit grayscale PNG
``images/NNNNN.png`` (NNNNN = index in train+test), and each list file names its split's images
in the order of the in-memory arrays (ascending index) with a one-hot 10-column label row. The
database lists the training images too (the training set is part of the database).

Streaming these files with transform "none", image_mode "L" and pixel_norm "unit" gives
uint8 (28, 28, 1) whose ``x / 255`` in float32 equals the IDX path's pixels (flattened there to
784), row for row: PNG is lossless.
"""
import os
import sys

import numpy as np
from PIL import Image

from orthohash_jax import cli, config_base
from orthohash_jax.data import idx, listfile

SPLIT_ORDER = ("train", "query", "db")


def write_fashion_mnist(config, output: str) -> str:
  """Writes the files; returns a one-line summary."""
  images, labels, train, query, db = idx.read_protocol(config)
  os.makedirs(os.path.join(output, "images"), exist_ok=True)
  used = np.unique(np.concatenate([train, query, db]))
  names = {int(i): f"images/{i:05d}.png" for i in used}
  for i in used:
    Image.fromarray(images[i]).save(os.path.join(output, names[int(i)]))
  onehot = np.eye(10, dtype=int)
  for split, rows in zip(SPLIT_ORDER, (train, query, db)):
    with open(os.path.join(output, listfile.SPLIT_FILES[split]), "w", encoding="utf-8") as f:
      for i in rows:
        f.write(names[int(i)] + " " + " ".join(map(str, onehot[labels[i]])) + "\n")
  return (f"{output}: {len(used)} PNG files; train.txt {len(train)}, test.txt {len(query)}, "
          f"database.txt {len(db)} rows")


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", required=True, choices=["fashion_mnist"])
  parser.add_argument("--output", required=True, help="directory to write")
  parser.add_argument("--data_dir", default=None, help=f"IDX directory ({idx.DEFAULT_DIR})")
  parser.add_argument("--num_query_per_class", type=int,
                      default=idx.PROTOCOL["num_query_per_class"], help="queries per class")
  parser.add_argument("--num_train_per_class", type=int,
                      default=idx.PROTOCOL["num_train_per_class"],
                      help="training images per class")
  parser.add_argument("--split_seed", type=int, default=0, help="seed of the split")
  args = parser.parse_args(argv)
  config = config_base.base_config()
  config.update(data_dir=args.data_dir, num_query_per_class=args.num_query_per_class,
                num_train_per_class=args.num_train_per_class, split_seed=args.split_seed)
  return cli.run_tool(lambda: cli.say(write_fashion_mnist(config, args.output)))


if __name__ == "__main__":
  sys.exit(main())
