"""The compiled functions of one hashing model on a data-parallel device mesh.

``Trainer(config, input_shape=, num_classes=, codebook=, total_steps=, mesh=, mean_std=)``
(``mesh`` None: ``parallel.make_mesh`` of ``num_devices`` and ``model_axis``) owns
the model definition (an NNX graph), the fixed constants (the codebook, split over the ``model``
mesh axis), the optimiser and two compiled functions; the head and the loss are those of
``methods.METHODS[config.loss]`` (a method that takes class targets gets ``codebook`` (C, K)),
and so is the architecture the config leaves at None (``methods.apply_architecture``: use_bn):

* ``run_chunk(state, first_step, xs (S, b, ...), ys (S, b[, C]))``: ``lax.scan`` over S steps of
  forward + loss + grad + Adam update. ``xs``/``ys`` are this process's rows of every global batch
  (numpy); they are assembled into global arrays split on the ``data`` axis while the state is
  replicated, so BatchNorm statistics are those of the global batch. Returns (state, losses
  float32 (S,)) without waiting for the device.
* ``encode(state, x (b, ...), pre_bn=False)``: eval-mode continuous codes float32 (B, K) of one
  global batch (this process's b rows), replicated on every process; ``pre_bn``: the hash-layer
  outputs W f(x) before BatchNorm.

Inputs: float arrays are used as they are; uint8 images travel as uint8 and are normalised on
the device with ``mean_std`` ((mean, std) per channel, pixel units) through
``data.normalization_table``, bit-equal to normalising on the host with numpy.
In-memory images are augmented on the device (``augment_crop_pad``) with a key from (seed, step);
the backbone's dropout (AlexNet, VGG16), the head's draws (JMLH) and the loss get other keys of
(seed, step). With
``compute_dtype`` bfloat16, convolutions and matmuls run in bfloat16 while parameters, optimiser
state, BatchNorm, the cosine head and the loss stay float32.

The state is a ``TrainState`` pytree of plain dicts (params, batch_stats, opt_state, step).
``with_bn_statistics(state, mean, var)`` returns the state with the hash layer's BatchNorm
running statistics replaced (BN recompute on a database).
"""
import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthohash_jax import augment, losses, methods, models, parallel
from orthohash_jax import data as data_lib

LR_SCHEDULES = ("constant", "step")  # step: x0.1 at 80% of the training steps


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


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
  """Compiled train / encode functions for one config, input shape, codebook and mesh."""

  def __init__(self, config, *, input_shape, num_classes: int, codebook, total_steps: int,
               mesh, mean_std=None):
    if mesh is None:
      mesh = parallel.make_mesh(config.num_devices, config.model_axis)
    self.config, self.mesh, self.num_classes = config, mesh, num_classes
    self.method = methods.METHODS[config.loss]
    methods.apply_architecture(config)  # use_bn None: the method's own, never "no BN"
    self.steps_per_epoch = max(total_steps // config.num_epochs, 1)
    num_devices = mesh.shape[parallel.DATA_AXIS]
    if config.batch_size % num_devices:
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the {num_devices} "
                       "devices of the data axis")
    self.eval_batch = -(-config.eval_batch_size // num_devices) * num_devices
    self.norm_table = None if mean_std is None else data_lib.normalization_table(mean_std)
    model = models.build_model(config, input_shape, num_classes, codebook,
                               self.method.make_head)
    self.graphdef, params, batch_stats, constants = nnx.split(
        model, nnx.Param, nnx.BatchStat, ...)
    self._init = (nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats))
    class_sharded, rest = parallel.class_sharding(mesh), parallel.replicated(mesh)
    self.constants = parallel.place(
        nnx.to_pure_dict(constants),
        lambda path, a: class_sharded if path[-1].key == "codebook" else rest)
    self.tx, self.schedule = make_optimizer(config, total_steps)
    replicated = parallel.replicated(mesh)
    self._train_chunk = jax.jit(self._scan, donate_argnums=0,
                                out_shardings=(replicated, replicated))
    self._encode = jax.jit(self._encode_batch, static_argnames="pre_bn",
                           out_shardings=replicated)

  # ---- state ----
  def _new_state(self) -> TrainState:
    params, batch_stats = self._init
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=self.tx.init(params))

  def initial_state(self) -> TrainState:
    return parallel.replicate(jax.device_get(self._new_state()), self.mesh)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state (``jax.eval_shape``, nothing computed)."""
    sharding = parallel.replicated(self.mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        jax.eval_shape(self._new_state))

  def with_bn_statistics(self, state: TrainState, mean, var) -> TrainState:
    """``state`` whose hash-layer BatchNorm running mean / var are ``mean`` / ``var`` (K,)."""
    model = nnx.merge(self.graphdef, self._init[0], jax.device_get(state.batch_stats),
                      self.constants)
    model.hash_layer.set_statistics(mean, var)
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return state.replace(batch_stats=parallel.replicate(batch_stats, self.mesh))

  # ---- compiled functions ----
  def _inputs(self, x):
    """uint8 images -> float32 by table lookup (bit-equal to host numpy); floats as they are."""
    if self.norm_table is None:
      return x
    table = jnp.asarray(self.norm_table)
    return table[x.astype(jnp.int32), jnp.arange(table.shape[1])]

  def _loss(self, params, batch_stats, constants, x, y, step, key):
    model = nnx.merge(self.graphdef, params, batch_stats, constants)
    codes, outputs = model(x, train=True, dropout_key=jax.random.fold_in(key, 1),
                           head_key=jax.random.fold_in(key, 2))
    c = self.config
    loss = self.method.loss(c, methods.base.Inputs(
        codes=codes, outputs=outputs, labels=y, step=step, key=jax.random.fold_in(key, 3),
        model=model, num_classes=self.num_classes, steps_per_epoch=self.steps_per_epoch,
        mesh=self.mesh))
    if c.quantization_weight:
      loss += c.quantization_weight * losses.quantization_loss(codes, c.quantization_kind)
    return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  def _step(self, constants, state: TrainState, batch):
    x, y = batch
    x = self._inputs(x)
    # random draws depend on (seed, step) only, so resumed runs match
    key = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    pad = self.config.augment_crop_pad
    if pad and x.ndim == 4:
      x = augment.random_crop_flip(key, x, pad)
    (loss, batch_stats), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state.params, state.batch_stats, constants, x, y, state.step, key)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), loss

  def _scan(self, state, constants, xs, ys):
    return jax.lax.scan(lambda s, b: self._step(constants, s, b), state, (xs, ys))

  def _encode_batch(self, params, batch_stats, constants, x, pre_bn=False):
    model = nnx.merge(self.graphdef, params, batch_stats, constants)
    x = self._inputs(x)
    if pre_bn:
      return model.hash_layer.fc(model.backbone(x, train=False))
    return model(x, train=False)[0]

  # ---- host side ----
  def run_chunk(self, state: TrainState, xs: np.ndarray, ys: np.ndarray):
    """Dispatches training on this process's rows xs (S, b, ...), ys (S, b[, C]); returns
    (state, losses (S,)) as device arrays (no host sync)."""
    return self._train_chunk(state, self.constants,
                             parallel.global_batch(self.mesh, xs, batch_axis=1),
                             parallel.global_batch(self.mesh, ys, batch_axis=1))

  def encode(self, state: TrainState, x: np.ndarray, pre_bn: bool = False) -> jax.Array:
    """Codes float32 (eval_batch, K) of one global batch whose rows of this process are x."""
    return self._encode(state.params, state.batch_stats, self.constants,
                        parallel.global_batch(self.mesh, x), pre_bn=pre_bn)
