"""Train state with a member axis, optimizers and schedules, and the all-members step factory.

A `TrainState` holds M members: every leaf has a leading axis of size M. The per-member step is
written for one member and lifted with `ensembles.members.member_map` into one jitted step.

Extension points for later methods, so they need no rework of this file:
  * ``TrainState.extra`` is a dict of per-member method state carried (and checkpointed) with the
    members. If it holds ``sample_weights`` [M, N_train], the loss weights each example by it
    (checkpoint boosting).
  * Sparse training lives in the optimizer: an optax wrapper keeps masks in ``opt_state``.
  * A network that holds several members (BatchEnsemble, MIMO, TreeNet:
    `ensembles.models.multi_member`) returns logits [B, M', K] and declares how a batch becomes its
    training input (its ``training_batch``); the loss averages (or sums) over the M' outputs and
    the predictor returns each output as a member.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ensembles import augment as augment_lib
from ensembles import members as members_lib
from ensembles import targets
from ensembles.models import multi_member

PyTree = Any

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")


@flax.struct.dataclass
class TrainState:
  """State of M members; every leaf has a leading member axis [M, ...].

  step: [M] int32 optimizer steps taken. params / model_state (e.g. ``batch_stats``) / opt_state:
  the member's trees. rng: [M, 2] uint32 raw PRNG keys, one per member (dropout and augmentation
  keys are ``fold_in(rng, step)``, so a resumed run draws the same randomness). extra: per-member
  method state (see module docstring).
  """

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  rng: jax.Array
  extra: dict = flax.struct.field(default_factory=dict)


def learning_rate_schedule(cfg: Any, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """lr(t) for t in optimizer steps. Fields of ``cfg`` (the config's ``training`` block):

  lr, lr_schedule in {constant, cosine, step}, warmup_epochs (linear from 0), and for ``step``:
  decay_milestones (fractions of training, e.g. (0.5, 0.75)) and decay_factor (e.g. 0.1).
  cosine: lr · ½(1 + cos(π t / T)) after warmup.
  """
  if cfg.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"training.lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}.")
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  decay_steps = max(total_steps - warmup, 1)
  if cfg.lr_schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, decay_steps)
  else:
    boundaries = {int(round(f * total_steps)) - warmup: cfg.decay_factor for f in cfg.decay_milestones}
    main = optax.piecewise_constant_schedule(cfg.lr, boundaries)
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def make_optimizer(cfg: Any, total_steps: int, steps_per_epoch: int,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
  """The optimizer of the config's ``training`` block (``schedule`` replaces its lr schedule).

  sgd: L2 weight decay added to the gradient (g + λw), then momentum (optionally Nesterov);
  adam: L2 decay added to the gradient; adamw: decoupled decay. ``weight_decay_on``: ``all``
  parameters, or ``kernels`` only (`decayed_kernels`: parameters of 2 or more dimensions, no decay
  on biases and BatchNorm scales and offsets, as the FreeTickets ImageNet recipe).
  ``clip_grad_norm`` c > 0: first g ← g · min(1, c / ||g||₂), the norm over all of a member's
  parameters (before weight decay).
  """
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}.")
  lr = schedule or learning_rate_schedule(cfg, total_steps, steps_per_epoch)
  wd = float(cfg.weight_decay)
  on = cfg.get("weight_decay_on", "all")
  if on not in WEIGHT_DECAY_ON:
    raise ValueError(f"training.weight_decay_on must be one of {WEIGHT_DECAY_ON}, got {on!r}.")
  mask = None if on == "all" else decayed_kernels
  if cfg.optimizer == "adamw":
    tx = optax.adamw(lr, weight_decay=wd, mask=mask)
  else:
    base = (optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
            if cfg.optimizer == "sgd" else optax.adam(lr))
    tx = optax.chain(optax.add_decayed_weights(wd, mask), base) if wd > 0 else base
  clip = float(cfg.get("clip_grad_norm", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


# per-member vectors that networks of several members stack to [M, C]: not kernels, whatever their rank
MEMBER_VECTOR_NAMES = ("bias", "scale", "batch_ensemble_in", "batch_ensemble_out")


def decayed_kernels(params: PyTree) -> PyTree:
  """``weight_decay_on = kernels``: True for parameters of 2 or more dimensions except the vectors
  a member network stacks ([M, C] biases, BatchNorm scales, BatchEnsemble's fast weights)."""
  def is_kernel(path, p):
    name = getattr(path[-1], "key", None) if path else None
    return p.ndim > 1 and name not in MEMBER_VECTOR_NAMES
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               num_members: int, input_shape: tuple[int, ...], mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """M members, each initialised from its own key of split(key, M) (`init_member_states`)."""
  return init_member_states(model, tx, jax.random.split(key, num_members), input_shape, mesh)


def init_member_states(model: nn.Module, tx: optax.GradientTransformation, member_keys: jax.Array,
                       input_shape: tuple[int, ...], mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """One member per key of member_keys [M, 2]: params, model_state, opt_state, rng (member key ->
  (init key, rng) by a split). With a distributed ``mesh`` every leaf is created split over its
  ``members`` axis."""
  return make_init(model, tx, input_shape, mesh)(member_keys)


def make_init(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
              mesh: jax.sharding.Mesh | None = None) -> Callable:
  """The jitted ``init(member_keys [M, 2]) -> TrainState`` of `init_member_states` (the program
  that creates the members on the devices)."""

  platform = mesh.devices.flat[0].platform if mesh is not None else None

  def init_one(member_key):
    init_key, rng = jax.random.split(member_key)
    with targets.platform_scope(platform):
      variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=rng)

  out = members_lib.sharding(mesh, members_lib.MEMBER_AXIS) if members_lib.is_distributed(mesh) else None
  return jax.jit(jax.vmap(init_one), out_shardings=out)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0) -> jax.Array:
  """mean_b w_b · CE(logits_b, t_b); equals the plain mean cross-entropy when w = 1.

  logits [B, K], labels [B] int, weights [B] -> scalar. Targets t_b: one-hot(y_b), or with label
  smoothing ε > 0, (1 − ε)·one-hot(y_b) + ε/K.
  """
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return jnp.mean(weights * optax.softmax_cross_entropy(logits, targets))
  return jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))


COMPUTE_DTYPES = ("float32", "bfloat16")
WEIGHTED_LOSSES = ("mean", "normalized")
WEIGHT_DECAY_ON = ("all", "kernels")


def gradient_options(config: Any) -> dict:
  """The config's fields that shape the training loss and its gradient (`make_member_gradients`)."""
  t, a = config.training, config.augment
  return {"crop_padding": a.crop_padding, "flip": a.flip, "batch_split": t.batch_split,
          "label_smoothing": float(t.get("label_smoothing", 0.0)), "compute_dtype": t.get("compute_dtype", "float32"),
          "weighted_loss": t.get("weighted_loss", "mean")}


def in_compute_dtype(params: PyTree, x: jax.Array, compute_dtype: str) -> tuple[PyTree, jax.Array]:
  """Mixed precision: float parameters and inputs cast to ``compute_dtype`` for the forward and
  backward pass (the stored parameters, optimizer state and BatchNorm statistics stay float32;
  gradients flow back through the cast in float32). float32: unchanged."""
  if compute_dtype == "float32":
    return params, x
  dtype = jnp.dtype(compute_dtype)
  cast = lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
  return jax.tree.map(cast, params), cast(x)


@flax.struct.dataclass
class Batch:
  """One step's examples: images [..., B, H, W, C] (uint8 0..255, or float features), labels
  [..., B] int32 and ids [..., B] int32, the examples' indices in the training set (they pick the
  sample weights). The leading axis is M in the all-members step and absent for one member."""

  images: jax.Array
  labels: jax.Array
  ids: jax.Array


def gather_batch(images: jax.Array, labels: jax.Array, idx: jax.Array) -> Batch:
  """The `Batch` of examples idx [M, B] from a training set held whole (images [N, ...], labels [N])."""
  return Batch(images[idx], labels[idx], idx)


def make_member_gradients(model: nn.Module, *, mean: np.ndarray, std: np.ndarray, crop_padding: int = 0,
                          flip: bool = False, batch_split: int = 1, label_smoothing: float = 0.0,
                          compute_dtype: str = "float32", weighted_loss: str = "mean") -> Callable:
  """Returns ``gradients(state, batch) -> (grads, aux)`` for ONE member and its `Batch` [B, ...].

  The loss is the sample-weighted cross-entropy of the batch after the member's augmentation (keys
  from fold_in(rng, step)), weights ``extra["sample_weights"][batch.ids]`` (1 without them);
  gradients are taken w.r.t. the stored params, which are the effective weights (sparse methods keep
  pruned weights at exactly zero, so RigL sees the gradient of inactive connections). aux: {"loss",
  "logits", "labels", "model_state"}.

  ``batch_split`` = k > 1 computes the gradient as the mean of k independent gradients of equal
  parts of the batch (the same value: the loss is a mean), which XLA:CPU runs concurrently on
  several cores. Models with BatchNorm are refused (their statistics would be per part).
  ``label_smoothing`` ε: see `weighted_cross_entropy`; ``compute_dtype``: `in_compute_dtype`
  (logits are cast back to float32 for the loss). ``weighted_loss``: ``mean`` Σ_b w_b·CE_b / B
  (with globally mean-1 weights a step's size follows how many heavy examples its batch drew), or
  ``normalized`` Σ_b w_b·CE_b / Σ_b w_b (the batch's weights rescaled to mean 1 first: w_b·B/Σw). A network of several members
  (`multi_member.is_member_network`) first turns the augmented batch into its own training input,
  labels and weights [B', M'] (`model.training_batch`); its logits are [B', M', K], and the loss is
  scaled by `multi_member.loss_scale` (M' for summed member losses; aux["loss"] stays the mean).
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def gradients(state: TrainState, batch: Batch):
    x, y = batch.images, batch.labels
    weights = state.extra["sample_weights"][batch.ids] if "sample_weights" in state.extra else jnp.ones(y.shape)
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x = augment_lib.normalize(augment_lib.augment(aug_key, x, crop_padding, flip), mean, std)
    if multi_member.is_member_network(model):  # rows [B', M'] of member inputs, labels and weights
      x, y, weights = model.training_batch(jax.random.fold_in(aug_key, 1), x, y, weights)
    if weighted_loss == "normalized":  # Σ w·CE / Σ w: the batch's weights with mean 1
      weights = weights * (weights.size / jnp.sum(weights))
    mutable = list(state.model_state)
    if batch_split > 1 and mutable:
      raise ValueError(f"training.batch_split > 1 needs a model without BatchNorm statistics; this model has "
                       f"{mutable}.")
    if x.shape[0] % batch_split:
      raise ValueError(f"training.batch_size ({x.shape[0]}) must be divisible by training.batch_split ({batch_split}).")

    def loss_fn(params, x, y, w, key):
      params, x = in_compute_dtype(params, x, compute_dtype)
      logits, new_model_state = model.apply(
          {"params": params, **state.model_state}, x, train=True, rngs={"dropout": key}, mutable=mutable)
      logits = logits.astype(jnp.float32)
      loss = weighted_cross_entropy(logits, y, w, label_smoothing)
      return (loss * scale if scale != 1.0 else loss), (logits, new_model_state)

    scale = multi_member.loss_scale(model)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if batch_split == 1:
      (loss, (logits, new_model_state)), grads = grad_fn(state.params, x, y, weights, dropout_key)
    else:
      parts = [grad_fn(state.params, *part, jax.random.fold_in(dropout_key, i)) for i, part in
               enumerate(zip(*(jnp.split(a, batch_split) for a in (x, y, weights))))]
      loss = sum(p[0][0] for p in parts) / batch_split
      logits = jnp.concatenate([p[0][1][0] for p in parts])
      new_model_state = parts[0][0][1][1]
      grads = jax.tree.map(lambda *g: sum(g) / batch_split, *(p[1] for p in parts))
    loss = loss / scale if scale != 1.0 else loss  # reported: the mean over members
    return grads, {"loss": loss, "logits": logits, "labels": y, "model_state": dict(new_model_state)}

  return gradients


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    execution: str | members_lib.Execution, mean: np.ndarray, std: np.ndarray,
                    **options: Any) -> Callable:
  """Returns ``train_step(state, images, labels, idx) -> (state, metrics)``, jitted.

  images [N, H, W, C] uint8 and labels [N] are the whole training set (shared by members, kept on
  device); idx [M, B] are each member's example indices for this step. metrics: {"loss",
  "accuracy"}, each [M], laid out like the members (no collective is needed to produce them).
  ``execution``: a `members.Execution` (or a concrete mode name: one device); ``options``: those
  of `make_member_gradients` (augmentation, batch_split, label smoothing, compute dtype).

  With a distributed mesh (`members.make_mesh`) the same step is laid out over the devices: the
  state split over ``members``, idx [M, B] over ``members`` x ``data``, the training set replicated;
  XLA partitions the computation (a member's batch mean and BatchNorm statistics become reductions
  over ``data``). Random numbers are partitionable, so the result equals the one-device step.
  """
  step = _all_members_step(model, tx, execution, mean, std, options)
  mesh = members_lib.as_execution(execution, model).mesh
  return jax.jit(lambda state, images, labels, idx: step(state, _gathered(images, labels, idx, mesh)),
                 donate_argnums=0)


def make_batch_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                          execution: str | members_lib.Execution, mean: np.ndarray, std: np.ndarray,
                          **options: Any) -> Callable:
  """Returns ``train_step(state, batch) -> (state, metrics)``, jitted: the step of
  `make_train_step` on a `Batch` [M, B, ...] that the host read (streaming input, split over
  ``members`` x ``data`` on a mesh). The same batch gives the same result as the in-memory step."""
  step = _all_members_step(model, tx, execution, mean, std, options)
  return jax.jit(step, donate_argnums=0)


def _gathered(images: jax.Array, labels: jax.Array, idx: jax.Array, mesh: jax.sharding.Mesh | None) -> Batch:
  """`gather_batch` inside jit, idx and the batch laid out over ``members`` x ``data``."""
  idx = members_lib.constrain(idx, mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)
  return members_lib.constrain(gather_batch(images, labels, idx), mesh, members_lib.MEMBER_AXIS,
                               members_lib.DATA_AXIS)


def make_train_chunk(model: nn.Module, tx: optax.GradientTransformation, *,
                     execution: str | members_lib.Execution, mean: np.ndarray, std: np.ndarray,
                     **options: Any) -> Callable:
  """Returns ``train_chunk(state, images, labels, epoch_idx, start, count) -> (state, metrics)``,
  jitted: the train step of `make_train_step` for steps start, ..., start + count − 1 of one epoch
  in a single dispatch, step i on the batches idx = epoch_idx[:, i].

  epoch_idx [M, S, B] int32 is the epoch's example order (`epoch_indices`); start and count are
  traced (a `lax.fori_loop`), so one compiled program serves every chunk of the run. metrics:
  {"loss", "accuracy"}, each [S, M]: row i holds step i's values (rows outside the chunk are 0).
  The state after the chunk equals ``count`` calls of the single step (test_trainer). On a mesh,
  epoch_idx is split over ``members`` x (steps) x ``data``.

  On XLA:CPU a convolution inside a compiled loop runs about 70x slower than at top level
  (jax-ml/jax#12868, measured here); the trainer dispatches such models one step at a time there.
  """
  step = _all_members_step(model, tx, execution, mean, std, options)
  mesh = members_lib.as_execution(execution, model).mesh
  members_axis, data_axis = members_lib.MEMBER_AXIS, members_lib.DATA_AXIS

  @functools.partial(jax.jit, donate_argnums=0)
  def train_chunk(state, images, labels, epoch_idx, start, count):
    epoch_idx = members_lib.constrain(epoch_idx, mesh, members_axis, None, data_axis)
    batch = lambda i: _gathered(images, labels, jax.lax.dynamic_index_in_dim(epoch_idx, i, 1, keepdims=False), mesh)
    _, one_step = jax.eval_shape(step, state, batch(0))  # each metric [M]
    rows = jax.tree.map(lambda v: jnp.zeros((epoch_idx.shape[1], *v.shape), v.dtype), one_step)

    def body(i, carry):
      state, rows = carry
      state, metrics = step(state, batch(i))
      rows = jax.tree.map(lambda r, v: jax.lax.dynamic_update_index_in_dim(r, v, i, 0), rows, metrics)
      return state, rows

    state, rows = jax.lax.fori_loop(start, start + count, body, (state, rows))
    return members_lib.constrain(state, mesh, members_axis), members_lib.constrain(rows, mesh, None, members_axis)

  return train_chunk


def _all_members_step(model: nn.Module, tx: optax.GradientTransformation, execution: str | members_lib.Execution,
                      mean: np.ndarray, std: np.ndarray, options: dict) -> Callable:
  """The (unjitted) step of all members on their `Batch` [M, B, ...]: ``step(state, batch) -> (state, metrics)``;
  ``options``: the keyword options of `make_member_gradients` (`gradient_options`)."""
  gradients = make_member_gradients(model, mean=mean, std=std, **options)
  execution = members_lib.as_execution(execution, model)
  mesh = execution.mesh

  def member_step(state: TrainState, batch: Batch):
    grads, aux = gradients(state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": aux["loss"], "accuracy": jnp.mean(jnp.argmax(aux["logits"], -1) == aux["labels"]),
               # the unweighted cross-entropy, what the health check's spike test reads (`health.loss_spikes`)
               "ce": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(aux["logits"], aux["labels"]))}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=aux["model_state"])
    return new_state, metrics

  members_axis, data_axis = members_lib.MEMBER_AXIS, members_lib.DATA_AXIS

  def train_step(state, batch):
    state = members_lib.constrain(state, mesh, members_axis)
    batch = members_lib.constrain(batch, mesh, members_axis, data_axis)
    state, metrics = execution.map(member_step)(state, batch)
    return members_lib.constrain((state, metrics), mesh, members_axis)

  return train_step


def make_predict(model: nn.Module, *, execution: str | members_lib.Execution, mean: np.ndarray,
                 std: np.ndarray, compute_dtype: str = "float32") -> Callable:
  """Returns ``predict(params, model_state, images) -> probs [M, B, K]`` (eval mode, jitted); a
  network of M' members (logits [B, M', K], `multi_member`) gives [M·M', B, K], member-major.

  params / model_state are stacked [M, ...]; images [B, H, W, C] uint8 are shared by members.
  On a distributed mesh (``execution.mesh``) the members run split over ``members`` and the images
  over ``data``; the probabilities come back replicated (readable on every host).
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  execution = members_lib.as_execution(execution, model)
  mesh = execution.mesh

  @jax.jit
  def predict(params, model_state, images):
    params, model_state = members_lib.constrain((params, model_state), mesh, members_lib.MEMBER_AXIS)
    x = augment_lib.normalize(members_lib.constrain(images, mesh, members_lib.DATA_AXIS), mean, std)

    def one(p, ms, x):
      p, x = in_compute_dtype(p, x, compute_dtype)
      return jax.nn.softmax(model.apply({"params": p, **ms}, x, train=False).astype(jnp.float32))

    probs = execution.map(one, num_shared=1)(params, model_state, x)
    if probs.ndim == 4:  # [M, B, M', K] from networks of M' members each: M·M' members
      m, b, per_network, k = probs.shape
      probs = jnp.moveaxis(probs, 2, 1).reshape(m * per_network, b, k)
    return members_lib.constrain(probs, mesh)

  return predict


def make_mc_predict(model: nn.Module, *, num_passes: int, key: jax.Array,
                    execution: str | members_lib.Execution, mean: np.ndarray, std: np.ndarray,
                    compute_dtype: str = "float32") -> Callable:
  """MC dropout: ``predict(params, model_state, images) -> probs [M·T, B, K]``, T = num_passes
  stochastic passes per member (dropout on, BatchNorm in inference mode), vmapped over pass keys.

  Pass t of every batch uses the key fold_in(key, t), so the passes are T fixed dropout networks.
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  execution = members_lib.as_execution(execution, model)
  mesh = execution.mesh
  pass_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(num_passes))

  @jax.jit
  def predict(params, model_state, images):
    params, model_state = members_lib.constrain((params, model_state), mesh, members_lib.MEMBER_AXIS)
    x = augment_lib.normalize(members_lib.constrain(images, mesh, members_lib.DATA_AXIS), mean, std)

    def one(p, ms, x):
      p, x = in_compute_dtype(p, x, compute_dtype)

      def one_pass(k):
        with nn.intercept_methods(_dropout_always_on):
          logits = model.apply({"params": p, **ms}, x, train=False, rngs={"dropout": k})
          return jax.nn.softmax(logits.astype(jnp.float32))

      return jax.vmap(one_pass)(pass_keys)

    probs = execution.map(one, num_shared=1)(params, model_state, x)
    return members_lib.constrain(probs.reshape(-1, *probs.shape[2:]), mesh)

  return predict


def _dropout_always_on(next_fun, args, kwargs, context):
  """Flax method interceptor: every `nn.Dropout` call drops (as in training, whatever its
  ``deterministic`` says) with its rate and the ``dropout`` rng; other calls run unchanged. So any
  Flax model with dropout gives MC-dropout passes with no flag of its own (BatchNorm stays in
  inference mode). The mask is drawn as `nn.Dropout` draws it."""
  module = context.module
  if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  inputs = args[0]
  if module.rate == 0.0:
    return inputs
  if module.rate == 1.0:
    return jnp.zeros_like(inputs)
  keep = 1.0 - module.rate
  rng = kwargs.get("rng") or module.make_rng(module.rng_collection)
  shape = list(inputs.shape)
  for dim in module.broadcast_dims:
    shape[dim] = 1
  mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape), inputs.shape)
  return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def dropout_rates(model: nn.Module, input_shape: tuple[int, ...]) -> list[float]:
  """The rates of the `nn.Dropout` layers ``model`` calls on one example of ``input_shape`` (an
  abstract trace: nothing is computed)."""
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
      rates.append(float(context.module.rate))
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape), jnp.float32), train=False)

  jax.eval_shape(init)
  return rates


def predict_probs(predict: Callable, state: TrainState, images: np.ndarray, batch_size: int,
                  mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Member probabilities [M, N, K] over ``images`` (an array or a streamed view) in batches of
  ``batch_size`` (the last one padded with zeros). On a distributed ``mesh`` each batch is laid out
  over its ``data`` axis, every process reading only the rows its own devices hold
  (`evaluation_batch`); the probabilities come back whole on every process."""
  n = len(images)
  out = []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    probs = predict(state.params, state.model_state, evaluation_batch(images, start, stop, batch_size, mesh))
    out.append(np.asarray(probs)[:, : stop - start])
  return np.concatenate(out, axis=1)


def evaluation_batch(images: Any, start: int, stop: int, batch_size: int,
                     mesh: jax.sharding.Mesh | None = None) -> Any:
  """Rows start..stop-1 of ``images`` as one batch of ``batch_size`` (zero rows after ``stop``):
  a host array, or on a distributed mesh a global array split over ``data`` of which each process
  reads and builds only its own devices' rows (`jax.make_array_from_callback`)."""
  shape = (batch_size, *images.shape[1:])

  def rows(first: int, last: int) -> np.ndarray:
    """Rows first..last-1 of the padded batch."""
    idx = np.arange(start + first, start + last)
    x = np.asarray(images[idx[idx < stop]])
    pad = len(idx) - len(x)
    return np.concatenate([x, np.zeros((pad, *shape[1:]), images.dtype)]) if pad else x

  if not members_lib.is_distributed(mesh):
    return rows(0, batch_size)
  read = functools.lru_cache(maxsize=None)(rows)  # devices along ``members`` hold the same rows: read them once
  return jax.make_array_from_callback(shape, members_lib.sharding(mesh, members_lib.DATA_AXIS),
                                      lambda index: read(*index[0].indices(batch_size)[:2]))


def epoch_indices(data_keys: jax.Array, epoch: int, num_examples: int, batch_size: int,
                  shared_order: bool = False) -> jax.Array:
  """Each member's example order for one epoch: [M, steps_per_epoch, B] int32.

  Member m shuffles with fold_in(data_keys[m], epoch); the incomplete last batch is dropped.
  With ``shared_order`` every member uses member 0's order.
  """
  steps = num_examples // batch_size
  if steps < 1:
    raise ValueError(f"training.batch_size ({batch_size}) exceeds the {num_examples} training examples.")
  keys = data_keys[:1] if shared_order else data_keys
  perms = _permutations(keys, epoch, num_examples)[:, : steps * batch_size]
  perms = perms.reshape(len(keys), steps, batch_size)
  return jnp.broadcast_to(perms, (len(data_keys), steps, batch_size)) if shared_order else perms


@functools.partial(jax.jit, static_argnums=2)
def _permutations(keys, epoch, n):
  return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(keys).astype(jnp.int32)


@jax.jit
def all_finite(tree: PyTree) -> jax.Array:
  """True iff every leaf of ``tree`` is finite (checked before a checkpoint is written)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def num_params(params: PyTree) -> int:
  """Parameters of one member (leaves are stacked [M, ...])."""
  return int(sum(np.prod(x.shape[1:]) for x in jax.tree.leaves(params)))
