"""Training and evaluation of an OrthoHash model on a data-parallel device mesh.

* ``Trainer`` owns the model definition (an NNX graph), the fixed constants (codebook), the
  optimiser and two compiled functions:
  - ``train_chunk(state, constants, xs (S, B, ...), ys (S, B[, C]))``: ``lax.scan`` over S steps
    of forward + loss + grad + Adam update, the batch sharded on the ``data`` mesh axis and the
    state replicated, so BatchNorm statistics are those of the global batch. One host call per
    chunk (an epoch by default) keeps dispatch overhead away from the step time.
  - ``encode(state, constants, x)``: eval-mode continuous codes (running BN statistics).
* The state is a ``TrainState`` pytree of plain dicts (params, batch_stats, opt_state, step).
* Data order: epoch e visits the training set in ``np.random.default_rng([seed, e])``
  permutation order, batches of ``batch_size``, the incomplete last batch dropped; the batch of
  a step depends only on (seed, step), so a resumed run sees exactly the same data.
* ``train_and_evaluate(config, workdir)`` runs the loop: resume from the latest checkpoint,
  log ``metrics.jsonl``, save every ``checkpoint_every_steps`` (rounded to chunks) and on
  SIGTERM / orbax preemption, stop on a non-finite loss keeping the last good checkpoint,
  evaluate mAP and write ``results.json`` and ``codes.npz``.
"""
import json
import os
import signal
import time

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthohash_jax import checkpoint as checkpoint_lib
from orthohash_jax import codebook as codebook_lib
from orthohash_jax import data as data_lib
from orthohash_jax import export as export_lib
from orthohash_jax import losses, metrics, models, parallel
from orthohash_jax.data import listfile


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); reported as one line by ``main``."""


class Preempted(Exception):
  """Training stopped on SIGTERM / preemption after saving a checkpoint."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def validate_config(config, data: data_lib.RetrievalData) -> None:
  """Raises ValueError with a one-line message for settings that cannot work."""
  checks = [
      (config.num_bits > 0, f"num_bits must be positive, got {config.num_bits}"),
      (config.batch_size > 0, f"batch_size must be positive, got {config.batch_size}"),
      (config.batch_size <= len(data.train_x),
       f"batch_size {config.batch_size} is larger than the training set ({len(data.train_x)})"),
      (config.num_epochs > 0, f"num_epochs must be positive, got {config.num_epochs}"),
      (config.loss in ("orthohash", "ce"), f"loss must be orthohash or ce, got {config.loss!r}"),
      (config.backbone in BACKBONES, f"backbone must be one of {sorted(BACKBONES)}, got "
       f"{config.backbone!r}"),
      (config.margin_type in losses.MARGIN_TYPES,
       f"margin_type must be one of {losses.MARGIN_TYPES}, got {config.margin_type!r}"),
      (config.lr_schedule in ("constant", "step"),
       f"lr_schedule must be constant or step, got {config.lr_schedule!r}"),
      (config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


BACKBONES = {
    "mlp": lambda c, shape, rngs: models.MLP(int(np.prod(shape)), tuple(c.hidden), rngs=rngs),
    "cnn": lambda c, shape, rngs: models.SmallCNN(
        shape if len(shape) == 3 else _square_image(shape), rngs=rngs),
    "identity": lambda c, shape, rngs: models.Identity(int(np.prod(shape))),
}


def _square_image(shape):
  side = int(round(np.sqrt(np.prod(shape))))
  if side * side != np.prod(shape):
    raise ValueError(f"backbone cnn needs images (H, W, C) or square flat inputs, got {shape}")
  return (side, side, 1)


def build_model(config, data: data_lib.RetrievalData) -> models.HashModel:
  """backbone -> HashLayer -> CosSimHead (orthohash; classes padded to the model axis) or
  LinearHead (ce)."""
  rngs = nnx.Rngs(config.seed)
  backbone = BACKBONES[config.backbone](config, data.input_shape, rngs)
  hash_layer = models.HashLayer(backbone.out_features, config.num_bits, use_bn=config.use_bn,
                                rngs=rngs)
  if config.loss == "orthohash":
    head = models.CosSimHead(
        codebook_lib.make_codebook(config.codebook, data.num_classes, config.num_bits, config.seed),
        pad_classes_to=config.model_axis)
  else:
    head = models.LinearHead(config.num_bits, data.num_classes, rngs=rngs)
  return models.HashModel(backbone, hash_layer, head)


def make_optimizer(config, total_steps: int):
  """(optax transformation, lr schedule): Adam with torch-style coupled weight decay, the lr
  times ``backbone_lr_scale`` for the backbone, constant or x0.1 at 80% of ``total_steps``."""
  if config.lr_schedule == "step":
    schedule = optax.piecewise_constant_schedule(
        config.learning_rate, {int(0.8 * total_steps): 0.1})
  else:
    schedule = optax.constant_schedule(config.learning_rate)
  group_scale = optax.multi_transform(
      {"backbone": optax.scale(config.backbone_lr_scale), "hash": optax.identity()},
      lambda params: {k: jax.tree.map(lambda _: "backbone" if k == "backbone" else "hash", v)
                      for k, v in params.items()})
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=config.adam_eps),
      group_scale,
      optax.scale_by_learning_rate(schedule)), schedule


class Trainer:
  """Compiled train / encode functions for one config, dataset and mesh."""

  def __init__(self, config, data: data_lib.RetrievalData, mesh):
    validate_config(config, data)
    self.config, self.data, self.mesh = config, data, mesh
    num_devices = mesh.shape[parallel.DATA_AXIS]
    if config.batch_size % num_devices:
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the {num_devices} "
                       "devices of the data axis")
    self.steps_per_epoch = len(data.train_x) // config.batch_size
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.steps_per_chunk = config.steps_per_chunk or self.steps_per_epoch
    self.eval_batch = -(-config.eval_batch_size // num_devices) * num_devices
    model = build_model(config, data)
    self.graphdef, params, batch_stats, constants = nnx.split(
        model, nnx.Param, nnx.BatchStat, ...)
    self._init = (nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats))
    class_sharded, rest = parallel.class_sharding(mesh), parallel.replicated(mesh)
    self.constants = parallel.place(
        nnx.to_pure_dict(constants),
        lambda path, a: class_sharded if path[-1].key == "codebook" else rest)
    self.tx, self.schedule = make_optimizer(config, self.total_steps)
    state_sharding = parallel.replicated(mesh)
    self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0,
                               out_shardings=(state_sharding, state_sharding))
    self.encode_batch = jax.jit(self._encode, static_argnames="pre_bn",
                                out_shardings=state_sharding)

  # ---- state ----
  def _host_state(self) -> TrainState:
    params, batch_stats = self._init
    return TrainState(step=np.zeros((), np.int32), params=params, batch_stats=batch_stats,
                      opt_state=self.tx.init(params))

  def initial_state(self) -> TrainState:
    return parallel.replicate(self._host_state(), self.mesh)

  def abstract_state(self) -> TrainState:
    sharding = parallel.replicated(self.mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding),
                        self._host_state())

  # ---- compiled functions ----
  def _loss(self, params, batch_stats, constants, x, y):
    model = nnx.merge(self.graphdef, params, batch_stats, constants)
    codes, logits = model(x, train=True)
    c = self.config
    multilabel = y.ndim == 2
    if c.loss == "orthohash":  # classes stay split over the model axis
      logits = jax.lax.with_sharding_constraint(logits, parallel.logits_sharding(self.mesh))
      loss = losses.orthohash_loss(logits, y, scale=c.scale, margin=c.margin,
                                   margin_type=c.margin_type, multilabel=multilabel,
                                   multilabel_loss=c.multilabel_loss,
                                   num_classes=self.data.num_classes)
    else:
      loss = losses.cross_entropy_loss(logits, y, multilabel=multilabel)
    if c.quantization_weight:
      loss += c.quantization_weight * losses.quantization_loss(codes, c.quantization_kind)
    return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  def _train_step(self, constants, state: TrainState, batch):
    x, y = batch
    pad = self.config.augment_crop_pad
    if pad and x.ndim == 4:  # the key depends on (seed, step) only, so resumed runs match
      key = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
      x = listfile.random_crop_flip(key, x, pad)
    (loss, batch_stats), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state.params, state.batch_stats, constants, x, y)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), loss

  def _train_chunk(self, state, constants, xs, ys):
    return jax.lax.scan(lambda s, b: self._train_step(constants, s, b), state, (xs, ys))

  def _encode(self, params, batch_stats, constants, x, pre_bn=False):
    model = nnx.merge(self.graphdef, params, batch_stats, constants)
    if pre_bn:  # hash-layer outputs W f(x) before BatchNorm
      return model.hash_layer.fc(model.backbone(x, train=False))
    return model(x, train=False)[0]

  # ---- host side ----
  def batch_indices(self, start: int, stop: int) -> np.ndarray:
    """Training-set indices (stop - start, batch_size) of global steps [start, stop)."""
    rows, perms = [], {}
    for step in range(start, stop):
      epoch, j = divmod(step, self.steps_per_epoch)
      if epoch not in perms:
        perms[epoch] = np.random.default_rng([self.config.seed, epoch]).permutation(
            len(self.data.train_x))
      rows.append(perms[epoch][j * self.config.batch_size:(j + 1) * self.config.batch_size])
    return np.stack(rows)

  def run_chunk(self, state: TrainState, start: int, stop: int):
    """Trains steps [start, stop); returns (state, losses float32 (stop - start,))."""
    idx = self.batch_indices(start, stop)[:, parallel.process_batch_slice(self.config.batch_size)]
    xs = parallel.global_batch(self.mesh, self.data.train_x[idx], batch_axis=1)
    ys = parallel.global_batch(self.mesh, self.data.train_y[idx], batch_axis=1)
    return self.train_chunk(state, self.constants, xs, ys)

  def encode(self, state: TrainState, x: np.ndarray, pre_bn: bool = False) -> np.ndarray:
    """Continuous eval-mode codes, float32 (N, K), of host inputs x (N, ...); ``pre_bn``: the
    hash-layer outputs before BatchNorm."""
    out = []
    rows = parallel.process_batch_slice(self.eval_batch)
    for s in range(0, len(x), self.eval_batch):
      chunk = x[s:s + self.eval_batch]
      padded = np.concatenate([chunk, np.zeros((self.eval_batch - len(chunk),) + x.shape[1:],
                                               x.dtype)])
      codes = self.encode_batch(state.params, state.batch_stats, self.constants,
                                parallel.global_batch(self.mesh, padded[rows]), pre_bn=pre_bn)
      out.append(np.asarray(codes)[:len(chunk)])
    return np.concatenate(out)

  def evaluate(self, state: TrainState) -> dict:
    """Encodes queries and database; returns codes, labels and mAP@R (instance data: GLDv2
    mAP@100 against the ground truth, see ``instance.evaluate``)."""
    from orthohash_jax import instance  # pylint: disable=g-import-not-at-top
    if isinstance(self.data, instance.InstanceData):
      return instance.evaluate(self, state)
    q_codes, db_codes = self.encode(state, self.data.query_x), self.encode(state, self.data.db_x)
    q_packed, db_packed = metrics.as_packed(q_codes), metrics.as_packed(db_codes)
    topk = self.config.eval_topk
    return {
        "query_codes": q_packed, "db_codes": db_packed,
        "query_labels": self.data.query_y, "db_labels": self.data.db_y,
        "mAP": metrics.mean_average_precision(q_packed, db_packed, self.data.query_y,
                                              self.data.db_y, topk),
        "quantization_angle": metrics.quantization_angle(db_codes),
    }


class _SigtermFlag:
  """Remembers a SIGTERM instead of dying, so the loop can checkpoint and exit."""

  def __init__(self):
    self.raised = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _write_json(path, obj):
  if parallel.is_main_process():
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# Keys a resumed run may change: they alter neither the state nor the batch of any step.
RESUMABLE_KEYS = frozenset({
    "num_epochs", "checkpoint_every_steps", "keep_checkpoints", "steps_per_chunk", "eval_topk",
    "eval_batch_size", "eval_every_epochs", "export_faiss", "data_dir", "decode_threads",
    "num_devices", "model_axis"})


def check_same_run(workdir: str, config) -> None:
  """Raises ValueError when ``workdir`` holds checkpoints of a run with another config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
  changed = sorted(k for k in set(saved) | set(current)
                   if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if changed:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise ValueError(f"{workdir} holds checkpoints of a run with another config ({diffs}); "
                     "use a new --workdir")


def restore_run(workdir: str):
  """(trainer, state, step) of the latest usable checkpoint of the run in ``workdir``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir} is not a training run (no config.json)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  mesh = parallel.make_mesh(config.num_devices, config.model_axis)
  trainer = Trainer(config, data_lib.load(config), mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  state, step = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  if state is None:
    raise ValueError(f"no usable checkpoint in {workdir}/checkpoints")
  return trainer, state, step


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if possible), evaluates, writes results.json and codes.npz in workdir."""
  os.makedirs(workdir, exist_ok=True)
  data = data_lib.load(config)
  mesh = parallel.make_mesh(config.num_devices, config.model_axis)
  trainer = Trainer(config, data, mesh)
  check_same_run(workdir, config)
  _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  state, start = ckpt.restore_latest(trainer.abstract_state())
  if state is None:
    state = trainer.initial_state()
  else:
    print(f"resumed from checkpoint at step {start}", flush=True)
  chunk = trainer.steps_per_chunk
  ckpt_every = max(chunk, -(-config.checkpoint_every_steps // chunk) * chunk)
  eval_every = config.eval_every_epochs * trainer.steps_per_epoch
  log_path = os.path.join(workdir, "metrics.jsonl")
  print_every = max(1, trainer.total_steps // chunk // 10)
  sigterm = _SigtermFlag()
  train_seconds, steps_done = 0.0, 0
  step = start
  try:
    while step < trainer.total_steps:
      stop = min(step + chunk, trainer.total_steps)
      t0 = time.perf_counter()
      state, chunk_losses = trainer.run_chunk(state, step, stop)
      chunk_losses = np.asarray(chunk_losses)  # one host sync per chunk
      elapsed = time.perf_counter() - t0
      if not np.all(np.isfinite(chunk_losses)):
        bad = step + int(np.argmin(np.isfinite(chunk_losses)))
        last = ckpt.manager.latest_step()
        raise TrainingError(f"loss is not finite at step {bad}; stopped without saving "
                            f"(last good checkpoint: step {last} in {ckpt.directory})")
      if step > start:  # the first chunk includes compilation
        train_seconds += elapsed
        steps_done += stop - step
      step = stop
      record = {"step": step, "epoch": step / trainer.steps_per_epoch,
                "loss": float(chunk_losses.mean()), "lr": float(trainer.schedule(step - 1)),
                "steps_per_second": len(chunk_losses) / elapsed}
      if eval_every and step % eval_every == 0 and step < trainer.total_steps:
        record["mAP"] = trainer.evaluate(state)["mAP"]
      if parallel.is_main_process():
        with open(log_path, "a") as f:
          f.write(json.dumps(record) + "\n")
      if parallel.is_main_process() and (step // chunk) % print_every == 0:
        print(f"step {step}/{trainer.total_steps} loss {record['loss']:.4f} lr {record['lr']:.2g} "
              f"{record['steps_per_second']:.1f} steps/s"
              + (f" mAP {record['mAP']:.4f}" if "mAP" in record else ""), flush=True)
      preempted = parallel.any_process(sigterm.raised) or ckpt.reached_preemption(step)
      if step % ckpt_every == 0 or step == trainer.total_steps or preempted:
        ckpt.save(step, state)
      if preempted:
        raise Preempted(f"preempted at step {step}; checkpoint saved in {ckpt.directory}")
  finally:
    sigterm.restore()
    ckpt.close()
  result = trainer.evaluate(state)
  if parallel.is_main_process():
    export_lib.save_codes(os.path.join(workdir, "codes.npz"), result, config.num_bits,
                          config.to_dict(), faiss_index=config.export_faiss)
  summary = {
      "mAP": result["mAP"], "num_bits": config.num_bits, "steps": int(step),
      "train_seconds": train_seconds,
      "steps_per_second": steps_done / train_seconds if train_seconds else float("nan"),
      "quantization_angle": result["quantization_angle"],
      "eval_topk": config.eval_topk, "tie_policy": "ties broken by database index",
      "zero_relevance_policy": "AP = 0, counted in the mean",
      "num_queries": len(data.query_x), "num_database": len(data.db_x),
      "multilabel": data.multilabel, "dataset": data.name,
  }
  summary.update({k: v for k, v in result.items() if k.startswith("mAP_")})
  if config.get("revisited"):  # ROxford / RParis E/M/H with the trained hash layer
    from orthohash_jax import instance  # pylint: disable=g-import-not-at-top
    for spec in config.revisited.split(","):
      root, name = instance.parse_revisited(spec)
      summary[name] = instance.evaluate_revisited(trainer, state, root, name)
  _write_json(os.path.join(workdir, "results.json"), summary)
  return summary
