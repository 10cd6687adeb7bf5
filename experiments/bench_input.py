r"""Input pipeline: streaming ImageListSource vs a torch DataLoader, peak RSS, JPEG draft.

  pip install torch==2.13.0   # optional benchmark extra (a CPU build)
  flock /tmp/bench.lock python -m experiments.bench_input [--dir=/tmp/bench_input] \
      [--train_images=2048] [--reps=3] [--sections=train,rss,draft] [--output=F.json]

1. Generates JPEG files (256x256, quality 90): smooth two-colour gradients, a few blurred
   ellipses and rectangles, mild Gaussian noise; and list files (10 classes). Files are kept in
   --dir and reused by later runs.
2. Training pipeline images/s (decode + RandomResizedCrop(224) + flip + batch of 64 uint8):
   ours (``train_rows`` called from 3 threads: 3 batches in flight) and a torch DataLoader (same files,
   the same transform written with PIL + torch random numbers, uint8 tensors, prefetch 2 per
   worker) at 1 and 2 workers, on the same random order; after a warm-up of 2 batches; reps
   interleaved (ours, torch, ours, torch); every rep and the medians are reported, and the
   CPU time per image (all threads and worker processes, start-up but not imports included),
   which a busy machine disturbs far less than images/s.
3. Peak RSS of reading database.txt through ``eval_rows`` (Resize(224) + CenterCrop(224),
   batches of 256, 2 workers) at 2,000 and 20,000 images, each in a fresh subprocess.
4. JPEG draft mode on 1024x768 versions: mean / max absolute pixel difference to a full decode
   and the speed ratio, for the eval transform and RandomResizedCrop.
5. Section "labels" (not in the default set: it writes a 2.6 GB file): ``listfile.parse_list``
   on a generated ImageNet-1k-sized list (--label_rows=1,281,167 rows x --label_classes=1,000
   one-hot columns), in a fresh subprocess: wall seconds and peak RSS.
6. Section "arrayrecord" (not in the default set): the training pipeline (as in 2.) on
   --full_images JPEGs of 500 x 375 (ImageNet's commonest size; noisier than those of 1., so
   that a file is about ImageNet's average 110 KB) as list files, as ArrayRecord
   with the bytes kept, and as ArrayRecord re-encoded at shorter side 256 (JPEG quality 90), and
   the torch DataLoader on the JPEG files; 1 and 2 workers; every measurement in a fresh process
   (its peak RSS); medians over --reps interleaved reps. CPU per image both over the whole run
   (start-up included) and in the steady state (after the warm-up batches).
7. Section "scale" (not in the default set): a synthetic ArrayRecord dataset of
   --scale_records (5M) 8 x 8 PNG training records (written once, ~1 GB): opening it (metadata +
   labels: the index) and 100 training steps (MLP, batch 256) in a fresh process, RSS after
   opening and every 10 steps, and the peak.
Prints ``os.getloadavg()`` at start and end: only ratios measured side by side mean anything.
"""
import argparse
import concurrent.futures
import functools
import importlib
import json
import math
import multiprocessing
import os
import resource
import time

import numpy as np
from PIL import Image, ImageDraw

from experiments import child as child_lib
from array_record.python import array_record_module

from orthohash_jax import config_base, run
from orthohash_jax import data as data_lib
from orthohash_jax.data import listfile, records, streaming, transforms, write_arrayrecord

BATCH = 64
WARMUP = 2  # batches before the steady-state clocks start
RSS_SIZES = (2000, 20000)


_NOISE = np.random.default_rng(0).normal(0, 4, (1280, 1280, 3)).astype(np.int16)


def natural_image(rng, size=256, noise=1):
  """uint8 (size, size, 3): a gradient and a few shapes drawn at size / 4, upscaled bicubic
  (soft edges), plus Gaussian noise of std 4 x ``noise`` (a random window of a fixed noise
  field)."""
  small = size // 4
  t = np.add.outer(np.linspace(0, 1, small) * rng.uniform(-1, 1),
                   np.linspace(0, 1, small) * rng.uniform(-1, 1))
  t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  img = Image.fromarray((c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 8))):
    x0, y0 = rng.integers(-small // 4, small, 2)
    x1, y1 = np.array([x0, y0]) + rng.integers(small // 10 + 1, small // 2, 2)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape([int(x0), int(y0), int(x1), int(y1)], fill=fill)
  img = img.resize((size, size), Image.Resampling.BICUBIC)
  oy, ox = rng.integers(0, _NOISE.shape[0] - size, 2)
  noisy = np.asarray(img).astype(np.int16) + _NOISE[oy:oy + size, ox:ox + size] * noise
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _write_image(path, seed):
  Image.fromarray(natural_image(np.random.default_rng(seed))).save(path, quality=90)


def write_images(paths, seeds):
  """Writes ``natural_image(np.random.default_rng(seed))`` to each path (JPEG quality 90 or PNG,
  by the name) in processes spawned, not forked: the caller may have started JAX's threads."""
  with concurrent.futures.ProcessPoolExecutor(
      os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
    list(pool.map(_write_image, paths, seeds, chunksize=64))


def make_files(directory, n):
  """Shared images ``directory/images/NNNNNN.jpg`` (kept between runs) and, in
  ``directory/n{n}``, list files: train.txt = database.txt = images [0, n), test.txt = images
  [n, n + 100). Returns the list directory."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  names = [f"images/{i:06d}.jpg" for i in range(n + 100)]
  missing = [i for i, name in enumerate(names)
             if not os.path.exists(os.path.join(directory, name))]
  write_images([os.path.join(directory, names[i]) for i in missing], [[7, i] for i in missing])
  rows = [f"../{name} " + " ".join("1" if c == i % 10 else "0" for c in range(10))
          for i, name in enumerate(names)]
  lists = os.path.join(directory, f"n{n}")
  os.makedirs(lists, exist_ok=True)
  for filename, lines in (("train.txt", rows[:n]), ("database.txt", rows[:n]),
                          ("test.txt", rows[n:])):
    with open(os.path.join(lists, filename), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  return lists


def source_config(directory, workers, dataset="listfile"):
  config = config_base.base_config()
  config.update({
      "dataset": dataset, "data_dir": directory, "num_classes": 10, "seed": 0,
      "data_workers": workers, "skip_bad_images": False, "image_size": 224, "image_mode": "RGB",
      "train_transform": "random_resized_crop", "train_resize": 256,
      "eval_transform": "resize_center_crop", "eval_resize": 224, "jpeg_draft": False,
      "pixel_norm": "imagenet"})
  return config


def _cpu_s(who):
  usage = resource.getrusage(who)
  return usage.ru_utime + usage.ru_stime


def ours_images_per_s(directory, workers, order, dataset="listfile"):
  """(images/s after warm-up, CPU ms per image over the whole run incl. start-up, CPU ms per
  image in the steady state). The source's module is imported first, as torch is before the
  DataLoader's clock starts (importing grain costs 60-90 ms of CPU once per process). Warm-up:
  the first ``WARMUP`` batches, read one after the other (opening, the first reads of each
  shard); the steady-state clocks (wall and CPU, all threads) start once they are done and
  stop when the last batch is in, so they count exactly the remaining batches."""
  importlib.import_module(data_lib.SOURCES[dataset])
  cpu0 = _cpu_s(resource.RUSAGE_SELF)
  config = source_config(directory, workers, dataset)
  if dataset == "arrayrecord":
    config.num_classes = None
  src = data_lib.load(config)
  batches = order.reshape(-1, BATCH)
  positions = np.arange(BATCH)
  for s in range(WARMUP):
    src.train_rows(batches[s:s + 1], [s], positions)
  cpu1, start = _cpu_s(resource.RUSAGE_SELF), time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(3) as ahead:
    pending = [ahead.submit(src.train_rows, batches[s:s + 1], [s], positions)
               for s in range(WARMUP, WARMUP + 3)]
    for step in range(WARMUP, len(batches)):
      pending.pop(0).result()
      if step + 3 < len(batches):
        pending.append(ahead.submit(src.train_rows, batches[step + 3:step + 4], [step + 3],
                                    positions))
  steady = (len(batches) - WARMUP) * BATCH
  rate = steady / (time.perf_counter() - start)
  cpu2 = _cpu_s(resource.RUSAGE_SELF)
  src.close()
  return rate, (cpu2 - cpu0) * 1e3 / len(order), (cpu2 - cpu1) * 1e3 / steady


def torch_images_per_s(directory, workers, order):
  """As ``ours_images_per_s``; CPU counts the main process and the (reaped) workers, the
  steady state by the difference of two reads (see below)."""
  import torch  # pylint: disable=g-import-not-at-top

  names = [line.split()[0] for line in open(os.path.join(directory, "train.txt"))]

  class Files(torch.utils.data.Dataset):
    """RandomResizedCrop(224) + flip with torch random numbers, on PIL (as torchvision)."""

    def __len__(self):
      return len(names)

    def __getitem__(self, i):
      with Image.open(os.path.join(directory, names[i])) as img:
        img = img.convert("RGB")
        width, height = img.size
        area = width * height
        box = None
        for _ in range(10):
          target = area * torch.empty(1).uniform_(0.08, 1.0).item()
          aspect = math.exp(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3)).item())
          w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
          if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, (1,)).item()
            left = torch.randint(0, width - w + 1, (1,)).item()
            box = (left, top, left + w, top + h)
            break
        box = box or (0, 0, width, height)
        img = img.crop(box).resize((224, 224), Image.Resampling.BILINEAR)
        if torch.rand(1).item() < 0.5:
          img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(img, np.uint8))

  def run_loader(rows, warm):
    """Reads ``rows`` with a fresh DataLoader; (images/s after ``warm`` batches, CPU s of the
    whole read: this process and its reaped workers)."""
    loader = torch.utils.data.DataLoader(Files(), batch_size=BATCH, sampler=rows.tolist(),
                                         num_workers=workers, prefetch_factor=2,
                                         persistent_workers=False)
    cpu0 = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
    it = iter(loader)
    for _ in range(warm):
      next(it)
    start = time.perf_counter()
    n = sum(len(b) for b in it)
    rate = n / (time.perf_counter() - start) if n else 0.0
    del it  # joins the workers, so that their CPU time is counted
    return rate, _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0

  # Steady state by difference: a read of the warm-up batches alone costs the same start-up
  # (worker processes, their first batches) as the whole read.
  _, warm_cpu = run_loader(order[:WARMUP * BATCH], WARMUP)
  rate, cpu = run_loader(order, WARMUP)
  return rate, cpu * 1e3 / len(order), (cpu - warm_cpu) * 1e3 / (len(order) - WARMUP * BATCH)


def rss_child(directory, n):
  """Peak RSS (MiB) of reading n database rows through eval_rows (run in a fresh process)."""
  src = streaming.load(source_config(directory, 2))
  checksum = 0
  chunk = 256
  with concurrent.futures.ThreadPoolExecutor(2) as ahead:
    pending = [ahead.submit(src.eval_rows, "db", np.arange(s, min(s + chunk, n)))
               for s in (0, chunk)]
    for start in range(0, n, chunk):
      checksum += int(pending.pop(0).result()[:, 100, 100].sum())
      nxt = start + 2 * chunk
      if nxt < n:
        pending.append(ahead.submit(src.eval_rows, "db", np.arange(nxt, min(nxt + chunk, n))))
  src.close()
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, checksum


FULL_SIZE = (500, 375)  # the commonest ImageNet image size
FULL_NOISE = 8  # noise std 32: a 500 x 375 JPEG of ~108 KB, the average ImageNet file's size


def _write_full_image(path, seed):
  x = natural_image(np.random.default_rng(seed), 512, FULL_NOISE)[:FULL_SIZE[1], :FULL_SIZE[0]]
  Image.fromarray(x).save(path, quality=90)


def make_full_files(directory, n):
  """``n`` + 100 JPEGs of 500 x 375 (quality 90) under ``directory/full/images`` and their list
  files in ``directory/full``; ArrayRecord conversions of them with the bytes kept
  (``directory/ar_keep``) and re-encoded at shorter side 256, JPEG quality 90
  (``directory/ar_256``). Everything is kept for later runs. Returns the three folders."""
  full = os.path.join(directory, "full")
  os.makedirs(os.path.join(full, "images"), exist_ok=True)
  names = [f"images/{i:06d}.jpg" for i in range(n + 100)]
  missing = [i for i, name in enumerate(names) if not os.path.exists(os.path.join(full, name))]
  with concurrent.futures.ProcessPoolExecutor(
      os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
    list(pool.map(_write_full_image, [os.path.join(full, names[i]) for i in missing],
                  [[9, i] for i in missing], chunksize=64))
  rows = [f"{name} " + " ".join("1" if c == i % 10 else "0" for c in range(10))
          for i, name in enumerate(names)]
  for filename, lines in (("train.txt", rows[:n]), ("database.txt", rows[:n]),
                          ("test.txt", rows[n:])):
    with open(os.path.join(full, filename), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  out = [full]
  for name, extra in (("ar_keep", []), ("ar_256", ["--resize=256", "--jpeg_quality=90"])):
    out.append(os.path.join(directory, f"{name}_{n}"))
    if not os.path.exists(os.path.join(out[-1], "metadata.json")):
      status = write_arrayrecord.main(["--dataset=listfile", "--num_classes=10",
                                       f"--data_dir={full}", f"--output={out[-1]}",
                                       "--shard_size=256", *extra])
      if status:
        raise SystemExit(f"write_arrayrecord failed for {out[-1]}")
  return out


def input_child(spec):
  """One measurement in a fresh process: spec "side:folder:dataset:workers:n"; returns
  images/s, CPU ms per image (whole run; steady state) and the process's peak RSS (MiB)."""
  side, folder, dataset, workers, n = spec.split(":")
  order = np.random.default_rng(0).permutation(int(n))
  fn = torch_images_per_s if side == "torch" else functools.partial(ours_images_per_s,
                                                                     dataset=dataset)
  rate, cpu_ms, steady_ms = fn(folder, int(workers), order)
  return {"images_per_s": rate, "cpu_ms": cpu_ms, "steady_cpu_ms": steady_ms,
          "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def arrayrecord_section(directory, n, reps):
  """images/s, CPU ms per image and peak RSS for the training pipeline on full-size JPEG list
  files, ArrayRecord of the same JPEGs, ArrayRecord re-encoded at 256, and the torch DataLoader
  on the JPEG files; 1 and 2 workers; reps interleaved; each in a fresh process."""
  full, keep, small = make_full_files(directory, n)
  sides = (("list_full", "ours", full, "listfile"), ("ar_keep", "ours", keep, "arrayrecord"),
           ("ar_256", "ours", small, "arrayrecord"), ("torch_full", "torch", full, "listfile"))
  results = {}
  for rep in range(reps):
    for workers in (1, 2):
      for label, side, folder, dataset in sides:
        r = child_lib.run_json("experiments.bench_input",
                               [f"--input_child={side}:{folder}:{dataset}:{workers}:{n}"])
        results.setdefault(f"{label}_w{workers}", []).append(r)
        print(f"{label} workers={workers} rep={rep}: {r['images_per_s']:.1f} images/s, "
              f"{r['cpu_ms']:.2f} CPU ms/image ({r['steady_cpu_ms']:.2f} steady), "
              f"peak RSS {r['rss_mib']:.0f} MiB "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
  return {k: {m: float(np.median([r[m] for r in v])) for m in v[0]} for k, v in results.items()}


def write_tiny_records(directory, n, classes=1000, shard_size=65536, eval_size=1000):
  """A synthetic ArrayRecord dataset in ``directory`` (the layout of ``data/records.py``): ``n``
  training records and ``eval_size`` query and database records, 8 x 8 grayscale PNGs (256
  distinct ones, cycled), label i % ``classes``. Kept for later runs."""
  if os.path.exists(os.path.join(directory, records.METADATA)):
    return
  os.makedirs(directory, exist_ok=True)
  pngs = [records.png(np.random.default_rng([5, k]).integers(0, 256, (8, 8), dtype=np.uint8))
          for k in range(256)]
  splits = {}
  for split, size in (("train", n), ("query", eval_size), ("db", eval_size)):
    names = [records.shard_name(split, k, -(-size // shard_size))
             for k in range(-(-size // shard_size))]
    for k, name in enumerate(names):
      writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name),
                                                     write_arrayrecord.WRITER_OPTIONS)
      for i in range(k * shard_size, min((k + 1) * shard_size, size)):
        writer.write(records.encode(pngs[i % 256], [i % classes], f"tiny/{i}"))
      writer.close()
    with open(os.path.join(directory, records.labels_name(split)), "wb") as f:
      np.savez(f, indptr=np.arange(size + 1, dtype=np.int64),
               indices=(np.arange(size) % classes).astype(np.int32))
    splits[split] = {"size": size, "files": names,
                     "sizes": [min(shard_size, size - k * shard_size) for k in range(len(names))]}
  with open(os.path.join(directory, records.METADATA), "w", encoding="utf-8") as f:
    json.dump({"format": records.FORMAT, "num_classes": classes, "multilabel": False,
               "splits": splits, "image_encoding": "png", "source": {"dataset": "synthetic"},
               "options": {}, "skipped": {"count": 0, "examples": []}}, f)


def _rss_mib():
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def scale_child(directory, steps=100, chunk=10):
  """Opens the dataset (its index: metadata and labels) and trains ``steps`` steps (MLP, batch
  256) in chunks; RSS (MiB) after opening and after each chunk, and the peak."""
  config = config_base.base_config()
  config.update(dataset="arrayrecord", data_dir=directory, image_mode="L",
                train_transform="none", eval_transform="none", pixel_norm="unit",
                data_workers=2, batch_size=256, hidden=(32,), num_bits=16, num_epochs=1)
  config_base.validate(config)
  rss = {"start": _rss_mib()}
  start = time.perf_counter()
  data = data_lib.load(config)
  rss["index"], index_s = _rss_mib(), time.perf_counter() - start
  trainer = run.make_trainer(config, data)
  state = trainer.initial_state()
  labels = data.labels("train")
  for s in range(0, steps, chunk):
    state, _ = trainer.run_chunk(state, *data_lib.host_batch(config, data, s, s + chunk, labels))
    rss[f"step_{s + chunk}"] = _rss_mib()
  data.close()
  return {"records": data.size("train"), "index_seconds": index_s, "rss_mib": rss,
          "labels_dtype": str(labels.dtype), "labels_shape": list(labels.shape),
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def write_label_list(path, rows, classes, block=8192):
  """A one-hot list file ``train/CCCC/IIIIIII.JPEG l_1 ... l_C`` (class i % classes), written
  block by block from a uint8 byte matrix (every row the same length)."""
  template = np.frombuffer(b"train/0000/0000000.JPEG" + b" 0" * classes + b"\n", np.uint8)
  label0 = len(template) - 2 * classes  # byte of column 0's digit
  with open(path, "wb") as f:
    for start in range(0, rows, block):
      i = np.arange(start, min(start + block, rows))
      out = np.repeat(template[None], len(i), axis=0)
      for digits, first, number in ((4, 6, i % classes), (7, 11, i)):
        for d in range(digits):
          out[:, first + d] = ord("0") + number // 10 ** (digits - 1 - d) % 10
      out[np.arange(len(i)), label0 + 2 * (i % classes)] = ord("1")
      f.write(out.tobytes())


def labels_child(path, classes):
  """Parses ``path``; wall seconds and peak RSS (MiB) of this fresh process."""
  start = time.perf_counter()
  names, _, labels = listfile.parse_list(path, classes)
  seconds = time.perf_counter() - start
  ids = listfile.to_labels(labels, False, classes)
  return {"seconds": seconds, "rows": len(names), "checksum": int(ids.astype(np.int64).sum()),
          "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def draft_effect(directory, n=40):
  """(mean |diff|, max |diff|, time ratio draft/full) per transform on 1024x768 JPEGs."""
  big = os.path.join(directory, "big")
  os.makedirs(big, exist_ok=True)
  paths = []
  for i in range(n):
    path = os.path.join(big, f"{i}.jpg")
    if not os.path.exists(path):
      x = natural_image(np.random.default_rng([8, i]), 1024)[:768]
      Image.fromarray(x).save(path, quality=90)
    paths.append(path)
  out = {}
  for kind in ("resize_center_crop", "random_resized_crop"):
    results, times = {}, {}
    for draft in (False, True):
      t = transforms.Transform(kind, size=224, resize=224, draft=draft)
      start = time.perf_counter()
      xs = []
      for i, path in enumerate(paths):
        with Image.open(path) as img:
          xs.append(t(img, np.random.default_rng([0, i]) if t.random else None).astype(np.int16))
      times[draft] = time.perf_counter() - start
      results[draft] = np.stack(xs)
    diff = np.abs(results[True] - results[False])
    out[kind] = {"mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max()),
                 "share_of_pixels_differing": float((diff > 0).mean()),
                 "time_ratio_draft_over_full": times[True] / times[False]}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default="/tmp/bench_input")
  parser.add_argument("--train_images", type=int, default=2048)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--output", default=None)
  parser.add_argument("--sections", default="train,rss,draft",
                      help="comma-separated subset of train, rss, draft, labels, arrayrecord, "
                      "scale")
  parser.add_argument("--label_rows", type=int, default=1281167)
  parser.add_argument("--label_classes", type=int, default=1000)
  parser.add_argument("--rss_child", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--labels_child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--input_child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--scale_child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--scale_records", type=int, default=5_000_000,
                      help="scale section: training records of 8 x 8 pixels")
  parser.add_argument("--full_images", type=int, default=1024,
                      help="arrayrecord section: training images of 500 x 375")
  args = parser.parse_args()
  if args.input_child is not None:
    print(json.dumps(input_child(args.input_child)))
    return
  if args.scale_child is not None:
    print(json.dumps(scale_child(args.scale_child)))
    return
  if args.labels_child is not None:
    print(json.dumps(labels_child(args.labels_child, args.label_classes)))
    return
  if args.rss_child is not None:
    rss, checksum = rss_child(os.path.join(args.dir, f"n{args.rss_child}"), args.rss_child)
    print(json.dumps({"rss_mib": rss, "checksum": checksum}))
    return
  report = {"load_start": os.getloadavg()}
  print(f"load average at start: {report['load_start']}", flush=True)
  sections = set(args.sections.split(","))
  if "labels" in sections:
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"labels_{args.label_rows}x{args.label_classes}.txt")
    if not os.path.exists(path):
      write_label_list(path + ".part", args.label_rows, args.label_classes)
      os.replace(path + ".part", path)
    report["labels"] = child_lib.run_json(
        "experiments.bench_input", [f"--labels_child={path}",
                                    f"--label_classes={args.label_classes}"])
    report["labels"]["load"] = os.getloadavg()
    print(f"parse_list {args.label_rows} x {args.label_classes} ({os.path.getsize(path) / 1e9:.2f}"
          f" GB): {report['labels']['seconds']:.1f} s, peak RSS "
          f"{report['labels']['rss_mib']:.0f} MiB (load {report['labels']['load']})",
          flush=True)
    sections.discard("labels")
  if "arrayrecord" in sections:
    report["arrayrecord"] = arrayrecord_section(args.dir, args.full_images, args.reps)
    report["arrayrecord_load_end"] = os.getloadavg()
    print("\n| input | workers | images per CPU-second, steady (whole run) | CPU ms per "
          "image, steady (whole run) | images/s | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, m in report["arrayrecord"].items():
      label, workers = key.rsplit("_w", 1)
      print(f"| {label} | {workers} | {1000 / m['steady_cpu_ms']:.0f} ({1000 / m['cpu_ms']:.0f}) "
            f"| {m['steady_cpu_ms']:.2f} ({m['cpu_ms']:.2f}) | {m['images_per_s']:.0f} | "
            f"{m['rss_mib']:.0f} |")
    ar = report["arrayrecord"]
    for w in (1, 2):
      print(f"workers={w}: ArrayRecord at 256 / JPEG list files, images per CPU-second: steady "
            f"{ar[f'list_full_w{w}']['steady_cpu_ms'] / ar[f'ar_256_w{w}']['steady_cpu_ms']:.2f}x"
            f", whole run {ar[f'list_full_w{w}']['cpu_ms'] / ar[f'ar_256_w{w}']['cpu_ms']:.2f}x")
    sections.discard("arrayrecord")
  if "scale" in sections:
    folder = os.path.join(args.dir, f"tiny_{args.scale_records}")
    start = time.perf_counter()
    write_tiny_records(folder, args.scale_records)
    print(f"tiny records ready in {time.perf_counter() - start:.0f} s", flush=True)
    report["scale"] = child_lib.run_json("experiments.bench_input", [f"--scale_child={folder}"])
    report["scale"]["load"] = os.getloadavg()
    print(f"scale: {report['scale']['records']} records, index {report['scale']['index_seconds']:.2f}"
          f" s, labels {report['scale']['labels_dtype']} {report['scale']['labels_shape']}, RSS MiB "
          f"{report['scale']['rss_mib']}, peak {report['scale']['peak_rss_mib']:.0f} MiB "
          f"(load {report['scale']['load']})", flush=True)
    sections.discard("scale")
  if not sections:
    print(json.dumps(report))
    return
  train_dir = [make_files(args.dir, n) for n in RSS_SIZES][-1]
  order = np.random.default_rng(0).permutation(RSS_SIZES[1])[:args.train_images // BATCH * BATCH]
  if "train" in sections:
    rates, cpu = {}, {}
    for workers in (1, 2):
      for rep in range(args.reps):
        for side, fn in (("ours", ours_images_per_s), ("torch", torch_images_per_s)):
          rate, cpu_ms, _ = fn(train_dir, workers, order)
          rates.setdefault(f"{side}_w{workers}", []).append(rate)
          cpu.setdefault(f"{side}_w{workers}", []).append(cpu_ms)
          print(f"train {side} workers={workers} rep={rep}: {rate:.1f} images/s, "
                f"{cpu_ms:.2f} CPU ms/image", flush=True)
    report["train_images_per_s_median"] = {k: float(np.median(v)) for k, v in rates.items()}
    report["train_images_per_s_all"] = rates
    report["train_cpu_ms_per_image_median"] = {k: float(np.median(v)) for k, v in cpu.items()}
  if "rss" in sections:
    report["rss_mib"] = {}
    for n in RSS_SIZES:
      report["rss_mib"][n] = child_lib.run_json(
          "experiments.bench_input", [f"--dir={args.dir}", f"--rss_child={n}"])["rss_mib"]
      print(f"eval_rows over {n} database images: peak RSS {report['rss_mib'][n]:.0f} MiB",
            flush=True)
  if "draft" in sections:
    report["draft"] = draft_effect(args.dir)
  report["load_end"] = os.getloadavg()
  if "train" in sections:
    med, every = report["train_images_per_s_median"], report["train_images_per_s_all"]
    print("\n| workers | ours images/s (median; reps) | torch DataLoader images/s (median; reps) "
          "| ours / torch per rep | ratio of medians |")
    print("| --- | --- | --- | --- | --- |")
    for w in (1, 2):
      ours, torch_ = every[f"ours_w{w}"], every[f"torch_w{w}"]
      print(f"| {w} | {med[f'ours_w{w}']:.1f}; " + ", ".join(f"{r:.0f}" for r in ours) +
            f" | {med[f'torch_w{w}']:.1f}; " + ", ".join(f"{r:.0f}" for r in torch_) + " | " +
            ", ".join(f"{a / b:.2f}" for a, b in zip(ours, torch_)) +
            f" | {med[f'ours_w{w}'] / med[f'torch_w{w}']:.2f} |")
    cpu_med = report["train_cpu_ms_per_image_median"]
    for w in (1, 2):
      print(f"CPU ms per image (median), workers={w}: ours {cpu_med[f'ours_w{w}']:.2f}, torch "
            f"{cpu_med[f'torch_w{w}']:.2f} (contention-robust: the cost, not the speed)")
  if "rss" in sections:
    rss = report["rss_mib"]
    print(f"\npeak RSS eval_rows: {RSS_SIZES[0]} images {rss[RSS_SIZES[0]]:.0f} MiB, "
          f"{RSS_SIZES[1]} images {rss[RSS_SIZES[1]]:.0f} MiB, ratio "
          f"{rss[RSS_SIZES[1]] / rss[RSS_SIZES[0]]:.3f}")
  for kind, d in report.get("draft", {}).items():
    print(f"draft {kind} (1024x768 JPEG -> 224): mean |diff| {d['mean_abs_diff']:.2f}, max "
          f"{d['max_abs_diff']}, pixels differing {d['share_of_pixels_differing']:.1%}, "
          f"time draft/full {d['time_ratio_draft_over_full']:.2f}")
  print(f"load average at end: {report['load_end']}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
