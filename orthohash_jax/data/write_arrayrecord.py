r"""Converts an image dataset into ArrayRecord shards for ``dataset="arrayrecord"``.

  python -m orthohash_jax.data.write_arrayrecord --dataset=imagenet100 --data_dir=DIR \
      --output=OUT [--resize=256 --jpeg_quality=90] [--shard_size=4096] [--workers=N] [--skip_bad]
  python -m orthohash_jax.data.write_arrayrecord --dataset=fashion_mnist [--data_dir=IDX_DIR] \
      --output=OUT [--num_query_per_class=100 --num_train_per_class=500 --split_seed=0]
  python -m orthohash_jax.data.write_arrayrecord --dataset=tfds --tfds_name=imagenette \
      --data_dir=TFDS_DIR --tfds_splits=train=train,query=validation,db=train --output=OUT

Sources: list files (imagenet100 / nuswide / coco, or listfile with --num_classes; read and
validated by ``listfile.read_lists``), the Fashion-MNIST IDX files (our split,
``idx.read_protocol``; each image PNG-encoded, lossless, path ``images/NNNNN.png`` as
``write_listfiles`` names it) and any TFDS image-classification dataset prepared as
``array_record`` (opened by ``tfds_source.open_source``, its stored image bytes; each of train /
query / db is one TFDS split expression such as ``train[:90%]``). The layout of the output is
``records``'.

Images: kept as they are (the default), or with ``--resize=S`` re-encoded as JPEG of
``--jpeg_quality`` at shorter side S (torchvision's Resize(S), bilinear) when their shorter side
exceeds S; smaller ones are kept as they are. Every image is decoded once to check it.

Shards (``--shard_size`` records, contiguous rows of a split) are written by ``--workers``
processes (0: in this process) and published whole: written as ``NAME.part`` (locally, or in a
local staging folder for a gs:// output, then uploaded), then renamed. ``plan.json`` records the
source and options first: a rerun with the same ones resumes (finished shards are kept), other
ones or a folder holding other files are refused; ``metadata.json`` is written last.

Bad inputs stop the conversion with one line naming file and line (list files), index (IDX) or
split and index (TFDS): an unreadable image, a label outside [0, num_classes), a path listed
twice in a list file. ``--skip_bad`` leaves such rows out instead; their count and the first
few lines are in ``metadata.json``'s ``skipped``.
"""
import concurrent.futures
from concurrent.futures import process as futures_process
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile

import numpy as np
from array_record.python import array_record_module
from etils import epath
from PIL import Image

from orthohash_jax import cli, config_base
from orthohash_jax.data import DataError, idx, listfile, records, streaming, tfds_source, transforms

LIST_DATASETS = ("imagenet100", "nuswide", "coco", "listfile")
PLAN = "plan.json"
_EXAMPLES = 20  # skipped rows named in metadata.json
# One record per chunk (random access reads one record), stored as it is: encoded images do not
# compress, and the default zstd costs ~40 us per 100 KB record to read (bench_input).
WRITER_OPTIONS = "group_size:1,uncompressed"


@dataclasses.dataclass
class Rows:
  """Rows [start, stop) of one split, as a worker process reads them: ``kind`` "files" (``root``
  and the list file's names / lines), "arrays" (uint8 images in memory, ``names``) or "tfds"
  (``tfds`` = (name, split expression, data_dir, image feature, label feature)); ``labels``
  ``listfile.Labels`` of these rows (None for tfds: read with the images)."""
  kind: str
  start: int
  stop: int
  where: str  # list file, IDX directory or "tfds NAME SPLIT"
  names: np.ndarray = None
  lines: np.ndarray = None
  labels: listfile.Labels = None
  root: str = None
  images: np.ndarray = None
  tfds: tuple = None


@dataclasses.dataclass
class Shard:
  rows: Rows
  name: str
  num_classes: int
  resize: int
  quality: int
  skip: bool
  staging: str  # local folder the shard is written in
  output: str  # where it is published


def _read_rows(rows: Rows):
  """Yields (where, source path, image bytes or an OSError, int32 class ids) per row."""
  if rows.kind == "tfds":
    name, split, data_dir, image_key, label_key = rows.tfds
    source = tfds_source.open_source(name, split, data_dir, image_key, label_key)
    for i in range(rows.start, rows.stop):
      example = source[i]
      image = example[image_key]
      if not isinstance(image, bytes):  # a feature stored as raw pixels
        image = records.png(image)
      yield (f"{rows.where}[{i}]", f"{name}/{split}/{i}", image,
             np.atleast_1d(np.asarray(example[label_key], np.int64)).astype(np.int32))
    return
  for k in range(rows.stop - rows.start):
    classes = rows.labels.indices[rows.labels.indptr[k]:rows.labels.indptr[k + 1]]
    name = os.fsdecode(rows.names[k])
    if rows.kind == "arrays":
      yield f"{rows.where}: image {name}", name, records.png(rows.images[k]), classes
      continue
    file = os.path.join(rows.root, name)
    try:
      with open(file, "rb") as f:
        image = f.read()
    except OSError as e:
      image = e
    yield f"{rows.where}:{rows.lines[k]}: {file}", name, image, classes


def _image_bytes(image: bytes, resize: int, quality: int) -> bytes:
  """The bytes to store: checked by decoding, re-encoded when ``resize`` asks (module doc)."""
  with Image.open(io.BytesIO(image)) as img:
    img.load()
    if not resize or min(img.size) <= resize:
      return image
    mode = img.mode if img.mode in ("L", "RGB") else "RGB"
    small = img.convert(mode).resize(transforms.resized_shape(*img.size, resize),
                                     Image.Resampling.BILINEAR)
  buf = io.BytesIO()
  small.save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def _publish(local: str, output: str, name: str) -> None:
  """Moves the finished file ``local`` to ``output/name`` (an upload for gs://)."""
  target = epath.Path(output) / name
  if not str(output).startswith("gs://"):
    os.replace(local, target)
    return
  with open(local, "rb") as src, target.open("wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 22)
  os.unlink(local)


def write_shard(shard: Shard):
  """Writes and publishes one shard and its labels; returns (records, skipped lines)."""
  part = os.path.join(shard.staging, shard.name + ".part")
  writer = array_record_module.ArrayRecordWriter(part, WRITER_OPTIONS)
  counts, classes_kept, skipped = [], [], []
  try:
    for where, path, image, classes in _read_rows(shard.rows):
      problem = None
      if classes.size and (classes.min() < 0 or classes.max() >= shard.num_classes):
        problem = f"{where}: label {classes.max()} outside [0, {shard.num_classes})"
      else:
        try:
          if isinstance(image, OSError):
            raise image
          image = _image_bytes(image, shard.resize, shard.quality)
        except streaming.BAD_IMAGE_ERRORS as e:
          problem = f"{where}: cannot read the image: {e}"
      if problem:
        if not shard.skip:
          raise DataError(problem + " (pass --skip_bad to leave such rows out)")
        skipped.append(problem)
        continue
      writer.write(records.encode(image, classes, path))
      counts.append(len(classes))
      classes_kept.append(classes)
  finally:
    writer.close()
  indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
  labels = os.path.join(shard.staging, shard.name + ".labels.npz")
  with open(labels, "wb") as f:
    np.savez(f, indptr=indptr, indices=np.concatenate(classes_kept or [np.zeros(0, np.int32)]),
             skipped=np.array(skipped, str))
  _publish(labels, shard.output, shard.name + ".labels.npz")  # first: a shard implies its labels
  _publish(part, shard.output, shard.name)
  return len(counts), skipped


def _list_source(args):
  """(num_classes, multilabel, {split: [Rows]}, skipped lines) of a list-file dataset."""
  config = config_base.base_config()
  config.update(dataset=args.dataset, data_dir=args.data_dir, num_classes=args.num_classes,
                allow_duplicates=args.skip_bad, skip_bad_images=args.skip_bad)
  _, num_classes, root, parsed, multilabel = listfile.read_lists(config)
  splits, skipped = {}, []
  for split in records.SPLITS:
    path, names, lines, labels = parsed[split]
    keep = np.ones(len(names), bool)
    for r, first in zip(*listfile.first_duplicates(names)):
      skipped.append(f"{path}:{lines[r]}: {os.fsdecode(names[r])} is a duplicate of line "
                     f"{lines[first]}")
      keep[r] = False
    rows = np.flatnonzero(keep)
    splits[split] = Rows("files", 0, len(rows), path, names=names[rows], lines=lines[rows],
                         labels=labels.take(rows), root=root)
  return num_classes, multilabel, splits, skipped


def _idx_source(args):
  config = config_base.base_config()
  config.update(data_dir=args.data_dir, num_query_per_class=args.num_query_per_class,
                num_train_per_class=args.num_train_per_class, split_seed=args.split_seed)
  images, labels, train, query, db = idx.read_protocol(config)
  where = config.data_dir or idx.DEFAULT_DIR
  splits = {}
  for split, rows in zip(records.SPLITS, (train, query, db)):
    splits[split] = Rows("arrays", 0, len(rows), where,
                         names=np.array([f"images/{i:05d}.png" for i in rows], "S"),
                         labels=listfile.Labels.from_ids(labels[rows]),
                         images=images[rows])
  return 10, False, splits, []


def _tfds_source(args):
  chosen = tfds_source.parse_splits(args.tfds_splits)
  if "per_class" in chosen:
    raise DataError("write_arrayrecord takes --tfds_splits=train=S1,query=S2,db=S3 (convert "
                    "the per-class protocol's TFDS split with dataset=tfds instead)")
  splits, num_classes = {}, None
  for split in records.SPLITS:
    source = tfds_source.open_source(args.tfds_name, chosen[split], args.data_dir,
                                     args.image_feature, args.label_feature)
    num_classes = source.dataset_info.features[args.label_feature].num_classes
    splits[split] = Rows("tfds", 0, len(source), f"tfds {args.tfds_name} {chosen[split]}",
                         tfds=(args.tfds_name, chosen[split], args.data_dir, args.image_feature,
                               args.label_feature))
  return num_classes, False, splits, []


def _shards_of(rows: Rows, size: int):
  """``rows`` cut into consecutive Rows of at most ``size``."""
  out = []
  for start in range(0, max(rows.stop - rows.start, 1), size):
    stop = min(start + size, rows.stop - rows.start)
    if rows.kind == "tfds":
      out.append(dataclasses.replace(rows, start=start, stop=stop))
      continue
    part = dataclasses.replace(rows, start=0, stop=stop - start, names=rows.names[start:stop],
                               labels=rows.labels.take(np.arange(start, stop)))
    if rows.lines is not None:
      part.lines = rows.lines[start:stop]
    if rows.images is not None:
      part.images = rows.images[start:stop]
    out.append(part)
  return out


def _check_output(output: str, plan: dict):
  """Creates ``output`` or checks that it holds this same conversion; returns the names of the
  files already there."""
  out = epath.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  present = {p.name for p in out.iterdir()} if out.exists() else set()  # gs://: no folders
  if PLAN in present:
    previous = json.loads((out / PLAN).read_text())
    if previous != plan:
      changed = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
      raise DataError(f"{output} holds another conversion (plan.json differs in "
                      f"{', '.join(changed)}): use an empty folder")
  elif present:
    raise DataError(f"{output} is not empty and holds no {PLAN} of write_arrayrecord: use an "
                    "empty folder")
  else:
    (out / PLAN).write_text(json.dumps(plan, indent=1, sort_keys=True))
  return present


def convert(args) -> str:
  """Runs the conversion of ``args`` (the command line's); returns a one-line summary."""
  read = {"fashion_mnist": _idx_source, "tfds": _tfds_source}.get(args.dataset, _list_source)
  num_classes, multilabel, splits, skipped = read(args)
  if not str(args.output).startswith("gs://"):
    args.output = os.path.abspath(args.output)
  jobs = {s: _shards_of(rows, args.shard_size) for s, rows in splits.items()}
  names = {s: [records.shard_name(s, k, len(j)) for k in range(len(j))] for s, j in jobs.items()}
  encoding = (f"jpeg quality {args.jpeg_quality} at shorter side {args.resize} where larger, "
              "else as in the source" if args.resize else
              "png" if args.dataset == "fashion_mnist" else "as in the source")
  source = {"dataset": args.dataset, "data_dir": args.data_dir}
  if args.dataset == "tfds":
    source.update(tfds_name=args.tfds_name, tfds_splits=args.tfds_splits,
                  image_feature=args.image_feature, label_feature=args.label_feature)
  if args.dataset == "fashion_mnist":
    source.update(num_query_per_class=args.num_query_per_class,
                  num_train_per_class=args.num_train_per_class, split_seed=args.split_seed)
  options = {"resize": args.resize, "jpeg_quality": args.jpeg_quality,
             "shard_size": args.shard_size, "skip_bad": args.skip_bad}
  plan = {"format": records.FORMAT, "source": source, "options": options,
          "rows": {s: r.stop - r.start for s, r in splits.items()}}
  present = _check_output(args.output, plan)
  if records.METADATA in present:
    return f"{args.output}: already complete (metadata.json present)"
  remote = str(args.output).startswith("gs://")
  staging = tempfile.mkdtemp(prefix="write_arrayrecord_") if remote else args.output
  todo = [Shard(rows, names[s][k], num_classes, args.resize, args.jpeg_quality, args.skip_bad,
                staging, args.output)
          for s in records.SPLITS for k, rows in enumerate(jobs[s])
          if names[s][k] not in present]
  total = sum(r.stop - r.start for r in splits.values())
  done = total - sum(j.rows.stop - j.rows.start for j in todo)
  num_shards = sum(len(n) for n in names.values())
  pool = (concurrent.futures.ProcessPoolExecutor(
      args.workers, mp_context=multiprocessing.get_context("spawn")) if args.workers else None)
  try:
    pending = [pool.submit(write_shard, j) for j in todo] if pool else None
    for k, job in enumerate(todo):
      try:
        if pending:
          pending[k].result()
        else:
          write_shard(job)
      except futures_process.BrokenProcessPool as e:
        raise OSError(f"a worker process writing {job.name} died ({e})") from None
      done += job.rows.stop - job.rows.start
      cli.progress(f"write_arrayrecord: {done}/{total} rows, "
                   f"{num_shards - len(todo) + k + 1}/{num_shards} shards", log=False)
  finally:
    if pool:
      pool.shutdown(wait=True, cancel_futures=True)
    if remote:
      shutil.rmtree(staging, ignore_errors=True)
  return _finish(args.output, names, num_classes, multilabel, encoding, source, options,
                 skipped)


def _finish(output, names, num_classes, multilabel, encoding, source, options, skipped) -> str:
  """Joins the shards' labels into ``labels-{split}.npz`` and writes ``metadata.json``."""
  out = epath.Path(output)
  splits = {}
  for split, shard_names in names.items():
    ptrs, indices, sizes = [np.zeros(1, np.int64)], [], []
    for name in shard_names:
      with (out / (name + ".labels.npz")).open("rb") as f:
        z = np.load(f)
        ptrs.append(z["indptr"][1:] + ptrs[-1][-1])
        indices.append(z["indices"])
        sizes.append(len(z["indptr"]) - 1)
        skipped.extend(z["skipped"].tolist())
    buf = io.BytesIO()
    np.savez(buf, indptr=np.concatenate(ptrs), indices=np.concatenate(indices))
    (out / records.labels_name(split)).write_bytes(buf.getvalue())
    splits[split] = {"size": int(sum(sizes)), "files": shard_names, "sizes": sizes}
  meta = {"format": records.FORMAT, "num_classes": int(num_classes),
          "multilabel": bool(multilabel), "splits": splits, "image_encoding": encoding,
          "source": source, "options": options,
          "skipped": {"count": len(skipped), "examples": skipped[:_EXAMPLES]}}
  (out / records.METADATA).write_text(json.dumps(meta, indent=1))
  for shard_names in names.values():
    for name in shard_names:
      (out / (name + ".labels.npz")).unlink()
  sizes = ", ".join(f"{s} {v['size']}" for s, v in splits.items())
  return f"{output}: {sizes} records; {len(skipped)} rows skipped"


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", required=True,
                      choices=list(LIST_DATASETS) + ["fashion_mnist", "tfds"])
  parser.add_argument("--output", required=True, help="folder to write (local or gs://)")
  parser.add_argument("--data_dir", default=None,
                      help="list files + images, IDX files, or the TFDS data directory")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="list files: label columns (dataset listfile)")
  parser.add_argument("--num_query_per_class", type=int,
                      default=idx.PROTOCOL["num_query_per_class"], help="Fashion-MNIST split")
  parser.add_argument("--num_train_per_class", type=int,
                      default=idx.PROTOCOL["num_train_per_class"], help="Fashion-MNIST split")
  parser.add_argument("--split_seed", type=int, default=0, help="Fashion-MNIST split seed")
  parser.add_argument("--tfds_name", default=None, help="TFDS dataset name (dataset tfds)")
  parser.add_argument("--tfds_splits", default="train=train,query=test,db=train",
                      help="our split = TFDS split expression, for train, query and db")
  parser.add_argument("--image_feature", default="image", help="TFDS image feature")
  parser.add_argument("--label_feature", default="label", help="TFDS label feature")
  parser.add_argument("--resize", type=int, default=0,
                      help="re-encode as JPEG at this shorter side (0: keep the bytes)")
  parser.add_argument("--jpeg_quality", type=int, default=90, help="quality of re-encoded JPEGs")
  parser.add_argument("--shard_size", type=int, default=4096, help="records per shard")
  parser.add_argument("--workers", type=int, default=os.cpu_count(),
                      help="processes writing shards (0: this process)")
  parser.add_argument("--skip_bad", action="store_true",
                      help="leave out unreadable images, bad labels and repeated paths")
  args = parser.parse_args(argv)
  if args.dataset == "tfds" and not args.tfds_name:
    parser.error("--dataset=tfds needs --tfds_name")
  if args.shard_size < 1 or args.workers < 0 or args.resize < 0:
    parser.error("--shard_size must be >= 1, --workers and --resize >= 0")
  return cli.run_tool(lambda: cli.say(convert(args)))


if __name__ == "__main__":
  sys.exit(main())
