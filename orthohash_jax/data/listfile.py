"""List-file image datasets (ImageNet100, NUS-WIDE, MS-COCO as distributed by the hashing papers).

Layout under ``config.data_dir``: ``train.txt`` (training), ``test.txt`` (queries) and
``database.txt`` (retrieval set). Each line is ``relative/path.jpg l_1 ... l_C``: a path relative
to ``data_dir`` (no spaces) and a C-dim 0/1 label vector, C = num_classes. Blank lines are skipped.

Labels: if every row of every split has exactly one 1, labels are int32 (N,) class ids;
otherwise (any row with zero or several 1s) all splits are uint8 (N, C) multi-hot. The mode
follows the labels, never the dataset name (the reference code trained COCO single-label).
Multi-hot rows are kept dense only for C <= ``MAX_MULTILABEL_CLASSES`` (1,024); more classes
with multi-label rows are a ``DataError``. Single-label data of any C is one int32 array.

Parsing is vectorised, without per-row Python objects: the file is read in 16 MiB blocks of
whole lines; a regular line (path, then " 0" / " 1" for each class, "\n" or "\r\n") is checked
and read by numpy over the whole block, and only irregular lines (blank, tabs, several spaces,
errors) go through ``bytes.split``, which gives the exact error. Paths are kept as one numpy
``S`` array of UTF-8 bytes (``os.fsdecode`` gives the str), the 1s in sparse row form
(``Labels``). A 1.28M-row x 1,000-class one-hot list (2.6 GB) parses in 6.9 s with a peak RSS
of 385 MiB (``experiments/bench_input.py --sections=labels``; load average 2.8 on 2 cores).

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
import dataclasses
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
# Multi-label rows are dense uint8 (N, C) matrices downstream (losses, mAP relevance): kept
# for at most this many classes; single-label data of any C is int32 class ids.
MAX_MULTILABEL_CLASSES = 1024
_MAX_PATH = 4096  # longer "paths" are parsed as irregular lines
_BLOCK = 1 << 24  # bytes of list file parsed at once (16 MiB: ~10x that in temporaries)
_NEWLINE, _CR, _SPACE, _ZERO, _ONE = 10, 13, 32, 48, 49
_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


@dataclasses.dataclass(frozen=True)
class Labels:
  """The 1s of N label rows in compressed sparse row form: row i's class ids (ascending) are
  ``indices[indptr[i]:indptr[i + 1]]``; int64 indptr (N + 1,), int32 indices."""
  indptr: np.ndarray
  indices: np.ndarray

  @classmethod
  def from_ids(cls, ids) -> "Labels":
    """Single-label rows: integer class ids (N,) -> one 1 per row (int32 ids)."""
    return cls(np.arange(len(ids) + 1, dtype=np.int64), np.asarray(ids).astype(np.int32))

  def take(self, rows) -> "Labels":
    """The label rows ``rows`` (integer row numbers, any order) as a new ``Labels``."""
    rows = np.asarray(rows, np.int64)
    counts = self.counts[rows]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    starts = np.repeat(self.indptr[rows] - indptr[:-1], counts)
    return Labels(indptr, self.indices[starts + np.arange(indptr[-1])])

  @property
  def counts(self) -> np.ndarray:
    """int64 (N,): number of 1s per row."""
    return np.diff(self.indptr)

  def dense(self, num_classes: int) -> np.ndarray:
    """uint8 (N, num_classes) multi-hot rows."""
    rows = np.zeros((len(self.indptr) - 1, num_classes), np.uint8)
    rows[np.repeat(np.arange(len(rows)), self.counts), self.indices] = 1
    return rows


def _line_fields(raw: bytes, num_classes: int, where: str):
  """The checks of one irregular line (``bytes.split`` semantics): None for a blank line, else
  (path bytes, int32 class ids of its 1s); ``where`` is "list file:line"."""
  parts = raw.split()
  if not parts:
    return None
  values = parts[1:]
  if len(values) != num_classes:
    raise DataError(f"{where}: expected a path and {num_classes} labels, got {len(values)} labels")
  bad = [v for v in values if v not in (b"0", b"1")]
  if bad:
    raise DataError(f"{where}: label values must be 0 or 1, got {os.fsdecode(bad[0])!r}")
  return parts[0], np.array([c for c, v in enumerate(values) if v == b"1"], np.int32)


def _parse_block(buf: np.ndarray, ends: np.ndarray, num_classes: int, path: str,
                 first_line: int):
  """Parses whole lines (``buf`` uint8 ending in a newline, ``ends`` the positions of its
  newlines) numbered from ``first_line``.

  Regular lines (a path without whitespace, then exactly " d" for each of the C labels, d in
  {0, 1}, optionally \\r before the newline) are checked and read with whole-array operations;
  any other line (blank, tabs, extra spaces, a wrong count or value) goes through
  ``_line_fields``, which gives the exact error. Returns (names S (n,), int32 line numbers
  (n,), int64 label counts (n,), int32 class ids of the 1s in row order, the first line's
  DataError or None), blank lines left out and nothing from the bad line on.
  """
  starts = np.concatenate([[0], ends[:-1] + 1])
  stops = ends - (buf[np.maximum(ends - 1, 0)] == _CR) * (ends > starts)  # before "\r\n"
  region = stops - 2 * num_classes  # first byte of the label part of a regular line
  irregular = (region <= starts) | (region - starts > _MAX_PATH)
  irregular[~irregular] = buf[region[~irregular]] != _SPACE

  def inside(positions, last):  # positions in the label part (up to stop - last) of lines
    line = np.searchsorted(ends, positions)
    return line, (positions >= region[line]) & (positions <= stops[line] - last)

  # The label part alternates space / {0, 1}, starting with a space: no byte outside
  # {" ", "0", "1"}, no two neighbours both spaces or both not.
  space = buf == _SPACE
  for positions, last in ((np.flatnonzero(((buf | 1) != _ONE) & ~space), 1),
                          (np.flatnonzero(space[:-1] == space[1:]), 2)):
    line, hit = inside(positions, last)
    irregular[line[hit]] = True
  lengths = np.where(irregular, 0, region - starts)
  names, has_space = _gather_names(buf, starts, lengths)
  irregular |= has_space
  ones = np.flatnonzero(buf == _ONE)
  line_of_one, hit = inside(ones, 1)
  keep = hit & ~irregular[line_of_one]
  line_of_one, ones = line_of_one[keep], ones[keep]
  classes = ((ones - region[line_of_one]) // 2).astype(np.int32)
  counts = np.bincount(line_of_one, minlength=len(ends)).astype(np.int64)
  blank = np.zeros(len(ends), bool)
  error, extra = None, {}
  for i in np.flatnonzero(irregular):
    try:
      fields = _line_fields(buf[starts[i]:ends[i]].tobytes(), num_classes,
                            f"{path}:{first_line + i}")
    except DataError as e:  # lines from here on are dropped; the caller raises it
      error, blank[i:] = e, True
      break
    if fields is None:
      blank[i] = True
    else:
      extra[i] = fields
  if extra:  # splice the irregular lines' fields in
    names = names.astype(f"S{max(names.itemsize, max(len(f[0]) for f in extra.values()))}")
    for i, (name, _) in extra.items():
      names[i] = name
    rows = np.concatenate([line_of_one, np.repeat(list(extra), [len(f[1]) for f in
                                                               extra.values()])])
    cols = np.concatenate([classes] + [f[1] for f in extra.values()])
    order = np.lexsort((cols, rows))
    line_of_one, classes = rows[order], cols[order]
    counts = np.bincount(line_of_one, minlength=len(ends)).astype(np.int64)
  kept = ~blank
  numbers = (first_line + np.arange(len(ends))).astype(np.int32)
  return names[kept], numbers[kept], counts[kept], classes[kept[line_of_one]], error


def _gather_names(buf, starts, lengths):
  """(S array of the byte strings buf[starts[i]:starts[i] + lengths[i]], bool: which of them
  hold whitespace)."""
  width = max(int(lengths.max(initial=0)), 1)
  pos = np.add.outer(starts, np.arange(width))
  inside = np.arange(width) < lengths[:, None]
  chars = np.where(inside, buf[np.minimum(pos, len(buf) - 1)], 0).astype(np.uint8)
  return chars.view(f"S{width}")[:, 0], (_WHITESPACE[chars] & inside).any(axis=1)


def first_duplicates(names: np.ndarray):
  """(rows repeating an earlier row's name, the earlier row), both ascending in the first."""
  order = np.argsort(names, kind="stable")
  ordered = names[order]
  same = ordered[1:] == ordered[:-1]
  run_start = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]),
                                             np.arange(len(names)), 0))
  repeats, firsts = order[1:][same], order[run_start][1:][same]
  by_row = np.argsort(repeats)
  return repeats[by_row], firsts[by_row]


def parse_list(path: str, num_classes: int, allow_duplicates: bool = False):
  """Reads one list file: returns (relative paths as an S (N,) array of UTF-8 bytes (blank
  lines skipped), int32 (N,) line numbers, ``Labels``). Lines end at "\n" ("\r\n" too).

  Memory: the file is read in blocks of ``_BLOCK`` bytes; what is kept is the paths, the line
  numbers and the 1s (1.28M rows x 1,000 one-hot classes: about 80 MB, parsed in
  ``experiments/bench_input.py``'s "labels" section)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: list file not found")
  names, lines, counts, classes = [], [], [], []
  error, carry, line = None, b"", 1
  with open(path, "rb") as f:
    while error is None:
      block = f.read(_BLOCK)
      text = carry + block
      if block:  # whole lines only; the rest waits for the next block
        cut = text.rfind(b"\n") + 1
        carry = text[cut:]
        if not cut:
          continue
      elif not text:
        break
      else:  # the last line may lack its newline
        text = text if text.endswith(b"\n") else text + b"\n"
        cut, carry = len(text), b""
      buf = np.frombuffer(text, np.uint8, cut)
      ends = np.flatnonzero(buf == _NEWLINE)
      *parts, error = _parse_block(buf, ends, num_classes, path, line)
      for out, part in zip((names, lines, counts, classes), parts):
        out.append(part)
      line += len(ends)
      if not block:
        break
  names = np.concatenate(names) if names else np.array([], "S1")
  lines = np.concatenate(lines) if lines else np.array([], np.int32)
  # A duplicate is reported before a bad line after it, as reading line by line would.
  for r, first in zip(*first_duplicates(names)):
    message = (f"{path}:{lines[r]}: {os.fsdecode(names[r])} is a duplicate of line "
               f"{lines[first]}")
    if not allow_duplicates:
      raise DataError(message + " (set allow_duplicates to keep duplicates)")
    warnings.warn(message)
  if error is not None:
    raise error
  if not len(names):
    raise DataError(f"{path}: no entries")
  counts = np.concatenate(counts)
  indptr = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(counts, out=indptr[1:])
  return names, lines, Labels(indptr, np.concatenate(classes))


def check_files(root: str, parsed: dict, skip_bad_images: bool) -> None:
  """Checks that every image of every list exists under ``root`` (see the module docstring)."""
  listings, missing = {}, []
  for path, names, lines, _ in parsed.values():
    for name, line in zip(names, lines):
      folder, _, base = os.fsdecode(name).rpartition("/")
      listing = listings.get(folder)
      if listing is None:
        directory = os.path.join(root, folder)
        listing = listings[folder] = (set(os.listdir(directory)) if os.path.isdir(directory)
                                      else set())
      if base not in listing:
        missing.append(f"{path}:{line}: {os.path.join(root, folder, base)}")
  if not missing:
    return
  total = sum(len(p[1]) for p in parsed.values())
  message = f"{missing[0]} does not exist ({len(missing)} of the {total} listed images are missing"
  if not skip_bad_images:
    raise DataError(message + "; set skip_bad_images to substitute a constant image)")
  warnings.warn(message + "; substituted by a constant image)")


def to_labels(labels: Labels, multilabel: bool, num_classes: int):
  """int32 (N,) class ids (single-label: one 1 per row) or uint8 (N, C) multi-hot rows."""
  return labels.dense(num_classes) if multilabel else labels.indices.astype(np.int32)


def read_lists(config):
  """Parses and validates the three list files of ``config.data_dir`` (no image is opened).

  Returns (name, num_classes, root, parsed, multilabel) where ``parsed`` maps each split of
  ``SPLIT_FILES`` to (list-file path, relative image paths S (N,), int32 line numbers,
  ``Labels``).
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
  overlap = np.intersect1d(parsed["query"][1], parsed["db"][1])
  if len(overlap):
    warnings.warn(f"{name}: {len(overlap)} query images are also in database.txt")
  multilabel = any(np.any(p[3].counts != 1) for p in parsed.values())
  if multilabel and num_classes > MAX_MULTILABEL_CLASSES:
    raise DataError(f"{name}: multi-label data with {num_classes} classes; at most "
                    f"{MAX_MULTILABEL_CLASSES} are supported (multi-hot rows are dense "
                    f"(N, C) uint8 matrices in training and evaluation)")
  if info and multilabel != info["multilabel"]:
    warnings.warn(f"{name}: labels are {'multi' if multilabel else 'single'}-label, unlike the "
                  f"published lists; using the labels as they are")
  return name, num_classes, root, parsed, multilabel
