"""List-file image datasets (ImageNet100, NUS-WIDE, MS-COCO as distributed by the hashing papers).

Layout under ``config.data_dir``: ``train.txt`` (training), ``test.txt`` (queries) and
``database.txt`` (retrieval set). Each line is ``relative/path.jpg l_1 ... l_C``: a path relative
to ``data_dir`` (no spaces) and a C-dim 0/1 label vector, C = num_classes. Blank lines are skipped.

Labels: if every row of every split has exactly one 1, labels are int32 (N,) class ids;
otherwise (any row with zero or several 1s) all splits are uint8 (N, C) multi-hot. The mode
follows the labels, never the dataset name (the reference code trained COCO single-label).

Images are read by ``streaming.ImageListSource`` (decoded on demand, never all in memory);
this module only reads and validates the lists (``read_lists``).

Validation (``DataError`` naming file and line): missing list file, wrong column count, label
values other than 0/1, a path repeated within a file (an error unless ``allow_duplicates``),
split sizes differing from ``expected_sizes`` (a dict such as {"train": 13000, "test": 5000};
keys are the list-file stems). Queries also in the database are reported with a warning.
Every listed image must exist (``check_files``: one directory listing per folder, no image
opened: 0.5-0.8 s for 150,000 entries in 100 folders), else a ``DataError`` names the
first missing one and the count, unless ``skip_bad_images``, which warns and lets the streaming
source substitute them; undecodable images are reported when they are read.

Config keys: dataset, data_dir, num_classes (required for the generic "listfile"; overrides
``DATASET_INFO``, e.g. 81 for NUS-WIDE-81), expected_sizes, allow_duplicates, skip_bad_images.
"""
import os
import warnings

import numpy as np

from orthohash_jax.data import DataError

# num_classes, R (mAP@R depth of the papers) and whether the published lists are multi-label
# (informational: the loaded labels decide).
DATASET_INFO = {
    "imagenet100": {"num_classes": 100, "R": 1000, "multilabel": False},
    "nuswide": {"num_classes": 21, "R": 5000, "multilabel": True},
    "coco": {"num_classes": 80, "R": 5000, "multilabel": True},
}
SPLIT_FILES = {"train": "train.txt", "query": "test.txt", "db": "database.txt"}


def parse_list(path: str, num_classes: int, allow_duplicates: bool = False):
  """Reads one list file: returns (relative paths, line numbers, uint8 (N, C) label matrix)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: list file not found")
  paths, lines, rows, seen = [], [], [], {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      name, values = parts[0], parts[1:]
      if len(values) != num_classes:
        raise DataError(f"{path}:{lineno}: expected a path and {num_classes} labels, "
                        f"got {len(values)} labels")
      bad = [v for v in values if v not in ("0", "1")]
      if bad:
        raise DataError(f"{path}:{lineno}: label values must be 0 or 1, got {bad[0]!r}")
      if name in seen:
        message = f"{path}:{lineno}: {name} is a duplicate of line {seen[name]}"
        if not allow_duplicates:
          raise DataError(message + " (set allow_duplicates to keep duplicates)")
        warnings.warn(message)
      seen.setdefault(name, lineno)
      paths.append(name)
      lines.append(lineno)
      rows.append([v == "1" for v in values])
  if not paths:
    raise DataError(f"{path}: no entries")
  return paths, lines, np.array(rows, np.uint8)


def check_files(root: str, parsed: dict, skip_bad_images: bool) -> None:
  """Checks that every image of every list exists under ``root`` (see the module docstring)."""
  listings, missing = {}, []
  for path, names, lines, _ in parsed.values():
    for name, line in zip(names, lines):
      folder, _, base = name.rpartition("/")
      listing = listings.get(folder)
      if listing is None:
        directory = os.path.join(root, folder)
        listing = listings[folder] = (set(os.listdir(directory)) if os.path.isdir(directory)
                                      else set())
      if base not in listing:
        missing.append(f"{path}:{line}: {os.path.join(root, name)}")
  if not missing:
    return
  total = sum(len(p[1]) for p in parsed.values())
  message = f"{missing[0]} does not exist ({len(missing)} of the {total} listed images are missing"
  if not skip_bad_images:
    raise DataError(message + "; set skip_bad_images to substitute a constant image)")
  warnings.warn(message + "; substituted by a constant image)")


def to_labels(rows, multilabel: bool):
  """uint8 (N, C) rows -> int32 (N,) class ids (single-label) or the rows themselves."""
  return rows if multilabel else np.argmax(rows, axis=1).astype(np.int32)


def read_lists(config):
  """Parses and validates the three list files of ``config.data_dir`` (no image is opened).

  Returns (name, num_classes, root, parsed, multilabel) where ``parsed`` maps each split of
  ``SPLIT_FILES`` to (list-file path, relative image paths, line numbers, uint8 (N, C) rows).
  """
  name = config.dataset
  info = DATASET_INFO.get(name, {})
  num_classes = config.num_classes or info.get("num_classes")
  if not num_classes:
    raise DataError(f"{name}: set num_classes for a generic list-file dataset")
  root = config.data_dir
  if not root or not os.path.isdir(root):
    raise DataError(f"{name}: data_dir {root!r} is not a directory (it must hold "
                    f"{', '.join(SPLIT_FILES.values())})")
  expected = config.expected_sizes or {}
  allow_duplicates = config.allow_duplicates
  parsed = {}
  for split, filename in SPLIT_FILES.items():
    path = os.path.join(root, filename)
    parsed[split] = (path,) + parse_list(path, num_classes, allow_duplicates)
    want = expected.get(filename[:-4])
    if want is not None and len(parsed[split][1]) != want:
      raise DataError(f"{path}: {len(parsed[split][1])} entries, expected {want} "
                      f"(incomplete download or a different split?)")
  check_files(root, parsed, config.skip_bad_images)
  overlap = set(parsed["query"][1]) & set(parsed["db"][1])
  if overlap:
    warnings.warn(f"{name}: {len(overlap)} query images are also in database.txt")
  multilabel = any(np.any(p[3].sum(axis=1) != 1) for p in parsed.values())
  if info and multilabel != info["multilabel"]:
    warnings.warn(f"{name}: labels are {'multi' if multilabel else 'single'}-label, unlike the "
                  f"published lists; using the labels as they are")
  return name, num_classes, root, parsed, multilabel

