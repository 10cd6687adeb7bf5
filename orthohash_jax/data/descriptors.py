"""Precomputed global descriptors (DELG on GLDv2, ROxford5k, RParis6k) for instance retrieval.

Files (``convert_fire`` writes them from the authors' FIRe files; any numpy code can too):
* ``{train,test,database}.npz`` (test = queries): ``codes`` float32 (N, D), ``ids`` str (N,)
  image ids, ``labels`` int (N,) 0-based class ids (required for train, optional elsewhere).
* GLDv2 ground truth ``ground_truth.csv``: header with ``id`` and ``images`` (extra columns such as
  ``Usage`` are ignored); ``images`` lists the relevant database ids separated by spaces. A query
  with no row, or ``images`` empty or "None", has no ground truth and is not scored.
* Revisited Oxford/Paris ``gnd_<name>.json``: {"imlist": [N db ids], "qimlist": [Q query ids],
  "gnd": [Q dicts of "easy", "hard", "junk" index lists into imlist, and "bbx"]}.

``load(config)`` (dataset "gldv2", data_dir holding the three npz files and ground_truth.csv)
returns ``InstanceData``: train = GLDv2 train descriptors with ``num_classes`` (81,313) landmark
classes; queries/database = GLDv2 test/index descriptors whose labels are -1 where unknown,
so class-level mAP does not apply: score with ``ground_truth`` and
``revisited.gldv2_map_at_k`` (R = 100). ``load_revisited(root, name)`` reads ROxf/RPar
descriptors, puts them in imlist/qimlist order and returns them with their ground truth for
``revisited.revisited_map``.
"""
import csv
import dataclasses
import json
import os

import numpy as np

from orthohash_jax.data import DataError, RetrievalData

GLDV2_CLASSES = 81313
GLDV2_R = 100


@dataclasses.dataclass
class InstanceData(RetrievalData):
  """RetrievalData with image ids and, per query, the int64 array of relevant database indices
  (None: no ground truth). Query/database labels are -1 where unknown."""
  query_ids: np.ndarray = None
  db_ids: np.ndarray = None
  ground_truth: list = None
  protocol = "gldv2"

  def min_label(self, split: str) -> int:
    return 0 if split == "train" else -1  # -1: unknown (scored with the ground truth instead)

  def __post_init__(self):
    super().__post_init__()
    if len(self.query_ids) != len(self.query_x) or len(self.db_ids) != len(self.db_x):
      raise DataError(f"{self.name}: ids do not match the number of descriptors")
    if len(self.ground_truth) != len(self.query_x):
      raise DataError(f"{self.name}: ground truth has {len(self.ground_truth)} entries for "
                      f"{len(self.query_x)} queries")


@dataclasses.dataclass
class RevisitedData:
  """ROxf/RPar descriptors in revisitop order: query_x (Q, D), db_x (N, D), gnd (Q dicts)."""
  name: str
  query_x: np.ndarray
  db_x: np.ndarray
  gnd: list


def read_descriptors(path: str, need_labels: bool = False) -> dict:
  """Reads one descriptor npz: {"codes": float32 (N, D), "ids": str (N,), "labels": int32 (N,)
  or None}."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: descriptor file not found")
  with np.load(path, allow_pickle=False) as f:
    missing = {"codes", "ids"} - set(f.files)
    if missing:
      raise DataError(f"{path}: missing arrays {sorted(missing)} (has {sorted(f.files)})")
    codes, ids = f["codes"], f["ids"].astype(str)
    labels = f["labels"].astype(np.int64) if "labels" in f.files else None
  if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.floating):
    raise DataError(f"{path}: codes must be float (N, D), got {codes.dtype} {codes.shape}")
  if not np.all(np.isfinite(codes)):
    raise DataError(f"{path}: codes contain NaN or inf")
  if ids.shape != (len(codes),):
    raise DataError(f"{path}: {len(codes)} codes but ids of shape {ids.shape}")
  if len(np.unique(ids)) != len(ids):
    raise DataError(f"{path}: {len(ids) - len(np.unique(ids))} duplicate ids")
  if labels is None and need_labels:
    raise DataError(f"{path}: labels are required")
  if labels is not None and labels.shape != (len(codes),):
    raise DataError(f"{path}: {len(codes)} codes but labels of shape {labels.shape}")
  return {"codes": codes.astype(np.float32), "ids": ids,
          "labels": None if labels is None else labels.astype(np.int32)}


def _index(ids, path, what):
  lookup = {i: n for n, i in enumerate(ids)}

  def find(keys):
    unknown = [k for k in keys if k not in lookup]
    if unknown:
      raise DataError(f"{path}: {len(unknown)} {what} ids not found, e.g. {unknown[0]!r}")
    return np.array([lookup[k] for k in keys], np.int64)
  return find


def read_gldv2_ground_truth(path: str, query_ids, db_ids) -> list:
  """Per query id, the int64 array of relevant database indices, or None without ground truth."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: ground truth file not found")
  find_query, find_db = _index(query_ids, path, "query"), _index(db_ids, path, "database")
  ground_truth = [None] * len(query_ids)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if not {"id", "images"} <= set(reader.fieldnames or ()):
      raise DataError(f"{path}: header must have columns id and images, got {reader.fieldnames}")
    for row in reader:
      images = (row["images"] or "").split()
      if images and images != ["None"]:
        ground_truth[find_query([row["id"]])[0]] = np.unique(find_db(images))
  return ground_truth


def read_revisited_gnd(path: str) -> dict:
  """Reads ``gnd_<name>.json``: {"imlist", "qimlist", "gnd"} with index lists checked."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: ground truth file not found (convert gnd_*.pkl with convert_fire)")
  with open(path, encoding="utf-8") as f:
    gnd = json.load(f)
  if not {"imlist", "qimlist", "gnd"} <= set(gnd):
    raise DataError(f"{path}: needs keys imlist, qimlist and gnd, got {sorted(gnd)}")
  if len(gnd["gnd"]) != len(gnd["qimlist"]):
    raise DataError(f"{path}: {len(gnd['gnd'])} gnd entries for {len(gnd['qimlist'])} queries")
  for q, entry in enumerate(gnd["gnd"]):
    for key in ("easy", "hard", "junk"):
      idx = entry.get(key, [])
      if any(not 0 <= i < len(gnd["imlist"]) for i in idx):
        raise DataError(f"{path}: query {q} {key} has indices outside [0, {len(gnd['imlist'])})")
  return gnd


def _in_order(desc, wanted, path):
  """Reorders descriptors so that row n has id ``wanted[n]``."""
  if len(desc["ids"]) != len(wanted):
    raise DataError(f"{path}: {len(desc['ids'])} descriptors, the ground truth lists {len(wanted)}")
  return desc["codes"][_index(desc["ids"], path, "ground-truth")(list(wanted))]


def load_revisited(root: str, name: str) -> RevisitedData:
  """Reads ``root/{test,database}.npz`` and ``root/gnd_<name>.json`` (e.g. name "roxford5k")."""
  gnd = read_revisited_gnd(os.path.join(root, f"gnd_{name}.json"))
  paths = {s: os.path.join(root, f"{s}.npz") for s in ("test", "database")}
  query = _in_order(read_descriptors(paths["test"]), gnd["qimlist"], paths["test"])
  db = _in_order(read_descriptors(paths["database"]), gnd["imlist"], paths["database"])
  if query.shape[1] != db.shape[1]:
    raise DataError(f"{name}: query dim {query.shape[1]} != database dim {db.shape[1]}")
  return RevisitedData(name, query, db, gnd["gnd"])


def _labels_or_unknown(desc):
  return desc["labels"] if desc["labels"] is not None else np.full(len(desc["ids"]), -1, np.int32)


def load(config) -> InstanceData:
  root = config.data_dir
  if not root or not os.path.isdir(root):
    raise DataError(f"gldv2: data_dir {root!r} is not a directory (it must hold train.npz, "
                    f"test.npz, database.npz and ground_truth.csv)")
  num_classes = config.num_classes or GLDV2_CLASSES
  train = read_descriptors(os.path.join(root, "train.npz"), need_labels=True)
  query = read_descriptors(os.path.join(root, "test.npz"))
  db = read_descriptors(os.path.join(root, "database.npz"))
  dims = {len(d["codes"][0]) for d in (train, query, db)}
  if len(dims) != 1:
    raise DataError(f"gldv2: descriptor dimensions differ across splits: {sorted(dims)}")
  ground_truth = read_gldv2_ground_truth(os.path.join(root, "ground_truth.csv"), query["ids"],
                                         db["ids"])
  return InstanceData("gldv2", num_classes, train["codes"], train["labels"], query["codes"],
                      _labels_or_unknown(query), db["codes"], _labels_or_unknown(db),
                      query_ids=query["ids"], db_ids=db["ids"], ground_truth=ground_truth)
