"""The driver loop shared by methods: steps, progress bar, JSONL log, validation, checkpoints, resume.

`fit(run, state)` trains the M members of a `TrainState` for the run's epochs with its jitted
all-members step. A rerun with the same workdir restores the newest complete checkpoint and
continues from its step; because data order and per-step randomness are functions of (seed, epoch,
step), the resumed run ends with the same parameters as an uninterrupted one. The loop is made of
small steps: `_chunks` (data order, several steps per dispatch), `_validate`, `_Checkpoints`
(restore, save), `_Progress` (progress bar and training-metric log).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

import chex
import jax
import numpy as np
from tqdm.auto import tqdm

from ensembles import checkpoints
from ensembles import files
from ensembles import flops as flops_lib
from ensembles import hardware
from ensembles import health as health_lib
from ensembles import members as members_lib
from ensembles import metrics as metrics_lib
from ensembles import streaming
from ensembles import train as train_lib
from ensembles.context import Run
from ensembles.errors import NonFiniteLossError, Preempted, UnhealthyRunError  # noqa: F401  (re-exported)
from ensembles.models import multi_member


def _preemption_flag() -> tuple[dict, Callable[[], None]]:
  """Installs a SIGTERM handler (main thread only) that sets flag["signal"]; returns the flag and
  a function restoring the previous handler."""
  flag = {"signal": None}
  if threading.current_thread() is not threading.main_thread():
    return flag, lambda: None

  def handler(signum, frame):
    del frame
    flag["signal"] = signum

  previous = signal.signal(signal.SIGTERM, handler)
  return flag, lambda: signal.signal(signal.SIGTERM, previous)


def _should_stop(flag: dict, step: int) -> bool:
  """True once SIGTERM has arrived; across hosts, every process agrees on the same step through
  JAX's preemption sync point (needs `jax.distributed.initialize`)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.reached_preemption_sync_point(step))
  return flag["signal"] is not None


def _mean_metrics(history: list[tuple[dict, slice | None]]) -> dict[str, np.ndarray]:
  """Averages per-step metrics over steps: each value [M] (gathered from all hosts). ``history``
  holds (one step's metrics [M], None) or (a chunk's metrics [S, M], its rows)."""
  rows = []
  for metrics, chunk_rows in history:
    host = members_lib.to_host(metrics)
    rows.append({k: v[None] if chunk_rows is None else v[chunk_rows] for k, v in host.items()})
  return {k: np.concatenate([r[k] for r in rows]).mean(axis=0) for k in rows[0]}


@dataclasses.dataclass(frozen=True)
class Hook:
  """Work between steps: ``state = apply(state, done, batch)`` after every step count ``done`` in
  ``steps``, with that step's `train.Batch` [M, B, ...] (e.g. a sparse method's topology update
  every ΔT steps, whose gradient growth uses the batch). ``apply`` must be a
  deterministic function of the state and step so that resuming stays exact. A dispatch of several
  steps ends at each of ``steps``."""

  steps: frozenset
  apply: Callable


def fit(run: Run, state: train_lib.TrainState, hooks: Sequence[Hook] = ()) -> tuple[train_lib.TrainState, dict]:
  """Trains ``state`` (the run's M members) for ``run.epochs`` epochs; returns (state, info).

  Steps go to the device in chunks (`run.train_chunk`: one dispatch, no host sync, for every step
  up to the next boundary: a hook's step, a log, validation or checkpoint step, an epoch end, or
  ``config.steps_per_dispatch`` steps); a chunk's result equals one step per call
  (`run.train_step`, used where `steps_per_dispatch` is 1). After a chunk: validation (on the
  state the steps produced, before any hook changes it: an EDST ticket before its global
  exploration), the hooks (`Hook`), the progress bar and log, a checkpoint.

  With a distributed mesh the state is laid out over its ``members`` axis, the training set
  replicated and each epoch's indices [M, S, B] split over ``members`` x ``data`` (each host builds
  only its own devices' shards). A streamed training set (`streaming.ImageView`) is never placed
  whole: each step's batch is read by `streaming.TrainBatches` (each host its own rows) and trained
  with `run.batch_step`, one step per dispatch; the reader's state is saved with every checkpoint.
  On a multi-device CPU mesh each dispatch (and hook) finishes before
  the next is made (`members.synchronous_steps`).

  SIGTERM (a preemption notice) makes the loop finish its chunk, save a checkpoint and raise
  `Preempted`; rerunning resumes from it.

  Health (`ensembles.health`, ``run.health``): every step's loss is checked for spikes (at log
  steps and before every checkpoint), the members' validation predictions for chance accuracy and
  collapse onto one class; a flag is recorded (warn) or raises `UnhealthyRunError` (stop) before
  the step's checkpoint is written. The flags and the spike test's window are saved with each
  checkpoint, so a resumed run reports what the uninterrupted one would.

  info: {"train_time_s": wall time summed over resumed runs, "steps": total steps,
  "resumed_from": step restored from or 0}. Checkpoints go to ``run.workdir/checkpoints`` every
  config.checkpoint_every_steps steps and at the end (none without a workdir); none is written
  unless every parameter is finite.
  """
  run.require_devices("train")
  chex.assert_tree_shape_prefix((state.params, state.rng), (run.total_members,))  # [S·M, ...]
  streamed = streaming.is_streamed(run.data.x_train)
  if streamed and run.num_seeds > 1:
    raise ValueError(f"Seeds as members (seeds {run.seeds}) need a training set held in memory; this one is "
                     "streamed from disk: train the seeds one after another.")
  store = _Checkpoints(run)
  state = members_lib.place(state, run.mesh, members_lib.MEMBER_AXIS)
  state, start = store.restore(state)
  if streamed:  # batches read from disk as they are needed (`streaming.TrainBatches`)
    batches = streaming.TrainBatches(run, start, store.input_state)
  else:
    images, labels = members_lib.place((run.data.x_train, run.data.y_train), run.mesh)
  progress = _Progress(run, start, store.health_state)
  synchronous = members_lib.synchronous_steps(run.mesh)
  limit = steps_per_dispatch(run)
  ends = _chunk_ends(run, hooks, limit)
  flag, restore_handler = _preemption_flag()
  try:
    for first, done, epoch in _chunks(run, start, ends, limit):
      batch = None
      if streamed:
        batch = next(batches)
        state, step_metrics = run.batch_step(state, batch)
        progress.add(step_metrics)
      elif limit == 1:
        state, step_metrics = run.train_step(state, images, labels, epoch.step(first))
        progress.add(step_metrics)
      else:
        position = first % run.steps_per_epoch
        state, step_metrics = run.train_chunk(state, images, labels, epoch.device, position, done - first)
        progress.add(step_metrics, slice(position, position + done - first))
      if _is_validation_step(run, done):  # the state the steps produced, before hooks change it
        progress.check_health()  # the steps' own signals first (a spike precedes the collapse it causes)
        progress.show(_validate(run, state, done))
      for hook in hooks:
        if done in hook.steps:
          if batch is None:
            batch = _gather(images, labels, epoch.step(done - 1))
          state = hook.apply(state, done, batch)
      if synchronous:
        jax.block_until_ready(state)
      progress.step(done, done - first, store)
      stop = _should_stop(flag, done)
      if done % run.config.checkpoint_every_steps == 0 or done == run.total_steps or stop:
        progress.check_health()  # no checkpoint after an unchecked step: a stopped run keeps the last good one
        store.save(state, done, batches.state() if streamed else None, progress.health_state())
      if stop and done < run.total_steps:
        store.close()
        raise Preempted(f"SIGTERM received at step {done}/{run.total_steps}: " + (
            f"saved its checkpoint in {run.workdir}/checkpoints; rerun with the same workdir to resume."
            if run.workdir else "no workdir, so nothing was saved."))
  except UnhealthyRunError as err:
    raise UnhealthyRunError(f"{err} {store.kept()}") from None
  finally:
    restore_handler()
    progress.close()
    store.close()
  return state, {"train_time_s": store.train_time(), "steps": run.total_steps, "resumed_from": start}


_gather = jax.jit(train_lib.gather_batch)
THROUGHPUT_FIELDS = ("images_per_s", "images_per_s_per_device", "mfu")  # log fields measured in wall time


def steps_per_dispatch(run: Run) -> int:
  """The most steps of one dispatch: ``config.steps_per_dispatch``, or where it is 0 (auto) no
  limit but the chunk boundaries -- except 1 for a model with convolutions on XLA:CPU, where a
  convolution inside a compiled loop runs about 70x slower than at top level (jax-ml/jax#12868;
  README "Member execution and performance"), and 1 for streamed input (each step's batch is read
  on the host; reading runs ahead on other threads). 0 returned means no limit."""
  if streaming.is_streamed(run.data.x_train):
    return 1
  limit = int(run.config.get("steps_per_dispatch", 0))
  if limit == 0 and run.execution.has_conv and run.execution.platform == "cpu":
    return 1
  return limit


def train_program(run: Run) -> str:
  """Which of the run's jitted steps `fit` dispatches: ``batch_step`` (a streamed training set),
  ``train_step`` (one step per dispatch) or ``train_chunk`` (several steps per dispatch)."""
  if streaming.is_streamed(run.data.x_train):
    return "batch_step"
  return "train_step" if steps_per_dispatch(run) == 1 else "train_chunk"


def _chunk_ends(run: Run, hooks: Sequence[Hook], limit: int) -> np.ndarray:
  """The sorted step counts at which a dispatch must end: epoch ends (data order, validation),
  log and checkpoint steps, the hooks' steps, the last step, and every step when ``limit`` is 1."""
  total, c = run.total_steps, run.config
  if limit == 1:
    return np.arange(1, total + 1)
  ends = {total}
  for every in (run.steps_per_epoch, c.log_every_steps, c.checkpoint_every_steps):
    ends.update(range(every, total + 1, every))
  for hook in hooks:
    ends.update(t for t in hook.steps if 0 < t <= total)
  return np.array(sorted(ends))


class _Epoch:
  """One epoch's example order: ``host`` [S·M members, steps, B] (`Run.epoch_order`) and, on first
  use, the same on the mesh (``device``, split over ``members`` x ``data``)."""

  def __init__(self, run: Run, epoch: int):
    self.run, self.number = run, epoch
    self._host = self._device = None

  @property
  def host(self) -> np.ndarray:
    if self._host is None:
      self._host = self.run.epoch_order(self.number)
    return self._host

  @property
  def device(self) -> jax.Array:
    if self._device is None:
      self._device = members_lib.place(self.host, self.run.mesh, members_lib.MEMBER_AXIS, None, members_lib.DATA_AXIS)
    return self._device

  def step(self, step: int) -> jax.Array:
    """idx [M, B] of the run's step ``step`` (0-based; in this epoch) on the mesh."""
    position = step - self.number * self.run.steps_per_epoch
    return members_lib.place(self.host[:, position], self.run.mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)


def _chunks(run: Run, start: int, ends: np.ndarray, limit: int) -> Iterator[tuple[int, int, _Epoch]]:
  """(first step, steps done after the chunk, its `_Epoch`) for every dispatch from ``start``: each
  chunk ends at the next of ``ends`` (which include every epoch end) or after ``limit`` > 0 steps."""
  epoch = None
  first = start
  while first < run.total_steps:
    done = int(ends[np.searchsorted(ends, first, side="right")])
    if limit:
      done = min(done, first + limit)
    if epoch is None or epoch.number != first // run.steps_per_epoch:
      epoch = _Epoch(run, first // run.steps_per_epoch)
    yield first, done, epoch
    first = done


def _seeds_hint(run: Run, loss: np.ndarray) -> str:
  """With seeds trained as members: which seeds diverged, and how to train the others alone."""
  if run.num_seeds == 1:
    return ""
  bad = [seed for seed, part in zip(run.seeds, run.split_seeds(list(loss))) if not np.all(np.isfinite(part))]
  return (f" Seeds {bad} of {list(run.seeds)} (trained together as members) diverged; the others may finish "
          "trained one after another (experiments.compare --seeds_as_members=false).")


def _is_validation_step(run: Run, done: int) -> bool:
  epochs, rest = divmod(done, run.steps_per_epoch)
  return rest == 0 and epochs % run.config.eval_every_epochs == 0 and len(run.data.y_val) > 0


def _validate(run: Run, state: train_lib.TrainState, done: int) -> dict:
  """Validation accuracy and NLL of the members' mean prediction, written to the log (with several
  seeds: each seed's members' mean, ``val_accuracy`` the mean over seeds and the seeds' values in
  ``val_accuracy_seeds``)."""
  y = run.data.y_val
  member_probs = run.member_probs(state, run.data.x_val)  # [S·M, N, K]
  per_seed = [metrics_lib.ensemble_probs(p) for p in run.split_seeds(member_probs)]
  accuracy = [metrics_lib.accuracy(p, y) for p in per_seed]
  nll = [metrics_lib.nll(p, y) for p in per_seed]
  record = {"step": done, "epoch": done // run.steps_per_epoch,
            "val_accuracy": float(np.mean(accuracy)), "val_nll": float(np.mean(nll))}
  if run.num_seeds > 1:
    record.update(val_accuracy_seeds=accuracy, val_nll_seeds=nll)
  run.log.write(record)
  new = run.health.validation(run, done, np.asarray(member_probs), y)
  return {"val_acc": f"{record['val_accuracy']:.3f}", **_health_postfix(run, new)}


def _health_postfix(run: Run, new: list) -> dict:
  """The progress bar's count of health flags, once there are any."""
  return {"unhealthy": str(len(run.health.flags))} if new else {}


class _Checkpoints:
  """The run's checkpoints (none without a workdir) and the training wall time they record."""

  def __init__(self, run: Run):
    self.run = run
    self.manager = None if run.workdir is None else checkpoints.make_manager(
        os.path.join(run.workdir, "checkpoints"), run.config.keep_checkpoints)
    self.last_saved: int | None = None
    self.input_state: dict | None = None  # the streamed input's iterator state of the restored checkpoint
    self.health_state: dict | None = None  # the restored checkpoint's health flags and spike window
    self.time_before = 0.0  # training time of earlier (resumed) runs
    self.tick = time.perf_counter()

  def restore(self, state: train_lib.TrainState) -> tuple[train_lib.TrainState, int]:
    """The newest complete checkpoint's state and step, or (``state``, 0)."""
    restored = None if self.manager is None else checkpoints.restore_latest(self.manager, state)
    if restored is None:
      self.tick = time.perf_counter()
      return state, 0
    state, meta = restored
    start = int(meta["step"])
    if meta.get("total_steps", self.run.total_steps) != self.run.total_steps:
      raise ValueError(f"The checkpoint in {self.run.workdir} was written for {meta['total_steps']} steps, this "
                       f"config asks for {self.run.total_steps}; use a new workdir.")
    print(f"Resuming from step {start}/{self.run.total_steps} ({self.run.workdir}).", file=sys.stderr)
    self.last_saved, self.time_before = start, float(meta["train_time_s"])
    self.input_state = meta.get("input_state")
    self.health_state = meta.get("health")
    self.tick = time.perf_counter()
    return state, start

  def train_time(self) -> float:
    return self.time_before + time.perf_counter() - self.tick

  def save(self, state: train_lib.TrainState, step: int, input_state: dict | None = None,
           health_state: dict | None = None) -> None:
    """Checkpoints ``state`` after ``step`` steps (with the streamed input's iterator state and the
    health monitor's state), unless a parameter is not finite."""
    jax.block_until_ready(state)
    if not bool(train_lib.all_finite(state.params)):
      raise NonFiniteLossError(f"Non-finite parameters at step {step}; not saving. " + self.kept())
    if self.manager is None:
      return
    elapsed = self.train_time()
    meta = {"step": step, "train_time_s": elapsed, "total_steps": self.run.total_steps}
    if input_state is not None:
      meta["input_state"] = input_state
    if health_state is not None:
      meta["health"] = health_state
    checkpoints.save(self.manager, step, state, meta)
    files.flush_all()  # a remote metrics log holds the records up to this checkpoint
    self.time_before, self.tick = elapsed, time.perf_counter()
    self.last_saved = step

  def kept(self) -> str:
    """What is left to resume from, in words."""
    if self.manager is None:
      return "No workdir: nothing was saved."
    if self.last_saved is None:
      return f"No checkpoint was written yet in {self.run.workdir}/checkpoints."
    return f"The last good checkpoint (step {self.last_saved}) in {self.run.workdir}/checkpoints is kept."

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None
    files.flush_all()  # the end of training, also by an error: a remote log is written out whole


class _Progress:
  """Progress bar and the logged training loss and accuracy averaged over log_every_steps steps,
  with the throughput over the same steps (wall time between logs, the first including compiles):
  images/s (M x B per step) in all and per device, and the model FLOPs utilisation
  mfu = 3 · f_dense · M · B · R · steps/s / (devices · peak FLOP/s) where the device's peak is known
  (`hardware.peak_flops`; f_dense: the dense forward FLOPs of one example, `flops.layer_costs`;
  R: the rows one example costs a network of several members, `multi_member.rows_per_example`)."""

  def __init__(self, run: Run, start: int, health_state: dict | None = None):
    self.run = run
    self.history: list[dict] = []
    self.unchecked: list[tuple[dict, slice | None]] = []  # steps the health check has not seen yet
    self.checked = start  # steps done up to the last health check
    self.window = np.zeros((0, run.total_members))  # `health.loss_spikes`'s previous step losses
    if health_state is not None:  # a resumed run: its flags and window as they were at the checkpoint
      run.health.restore(health_state["monitor"])
      self.window = np.asarray(health_state["loss_window"], np.float64).reshape(-1, run.total_members)
    self.postfix: dict[str, str] = {}
    self.devices = run.mesh.size if run.mesh is not None else 1
    device = run.mesh.devices.flat[0] if run.mesh is not None else jax.devices()[0]
    self.peak = hardware.peak_flops(device, run.compute_dtype, float(run.config.get("peak_flops_per_device", 0.0)))
    self.images_per_step = run.total_members * run.config.training.batch_size
    rows = self.images_per_step * multi_member.rows_per_example(run.model)  # a member network's rows run
    self.flops_per_step = None if self.peak is None else 3.0 * rows * flops_lib.forward_flops(
        flops_lib.layer_costs(run.model, run.data.image_shape))
    self.since, self.steps_since = time.perf_counter(), 0
    self.bar = tqdm(total=run.total_steps, initial=start, desc=run.name, unit="step", dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0)

  def add(self, metrics: dict, rows: slice | None = None) -> None:
    """One step's metrics [M], or a chunk's [S, M] with its ``rows``."""
    self.history.append((metrics, rows))
    self.unchecked.append((metrics, rows))

  def check_health(self) -> None:
    """The spike test (`health.loss_spikes`) on the step losses since the last check; a spike is
    recorded at its own step (raises under on_unhealthy="stop")."""
    if not self.unchecked:
      return
    rows = []
    for metrics, chunk_rows in self.unchecked:
      ce = members_lib.to_host(metrics.get("ce", metrics["loss"]))
      rows.append(ce[None] if chunk_rows is None else ce[chunk_rows])
    self.unchecked = []
    losses = np.concatenate(rows)  # [T, S·M]
    spikes, self.window = health_lib.loss_spikes(self.window, losses, self.run.health.options,
                                                 self.run.data.num_classes)
    first = self.checked
    self.checked += len(losses)
    new = []
    for t, member, value, median in spikes:
      new += self.run.health.record(self.run, "loss_spike", first + t + 1, [
          {"member": member, "value": value, "limit": self.run.health.options.spike_factor * median,
           "median": median}])
    if new:
      self.show(_health_postfix(self.run, new))

  def health_state(self) -> dict:
    """What a checkpoint keeps of the health check: the flags and the spike test's window."""
    return {"monitor": self.run.health.state(), "loss_window": self.window.tolist()}

  def show(self, postfix: dict) -> None:
    self.postfix.update(postfix)
    self.bar.set_postfix(self.postfix)

  def step(self, done: int, steps: int, store: _Checkpoints) -> None:
    """After ``steps`` more steps, ``done`` in all: the bar, and the log at a log step."""
    self.bar.update(steps)
    self.steps_since += steps
    if done % self.run.config.log_every_steps and done != self.run.total_steps:
      return
    self.check_health()
    averaged = _mean_metrics(self.history)
    self.history = []
    if not np.all(np.isfinite(averaged["loss"])):
      raise NonFiniteLossError(
          f"Loss became non-finite by step {done} (per member: {averaged['loss'].tolist()}). Stopping. "
          f"{store.kept()} Lower training.lr or check the data." + _seeds_hint(self.run, averaged["loss"]))
    now = time.perf_counter()
    steps_per_s = self.steps_since / max(now - self.since, 1e-9)
    self.since, self.steps_since = now, 0
    record = {"step": done, "epoch": done / self.run.steps_per_epoch,
              "train_loss": float(averaged["loss"].mean()),
              "train_accuracy": float(averaged["accuracy"].mean()),
              "train_loss_members": averaged["loss"].tolist(),
              "images_per_s": steps_per_s * self.images_per_step,
              "images_per_s_per_device": steps_per_s * self.images_per_step / self.devices}
    if self.flops_per_step is not None:
      record["mfu"] = steps_per_s * self.flops_per_step / (self.devices * self.peak)
    self.run.log.write(record)
    self.show({"loss": f"{record['train_loss']:.4f}", "acc": f"{record['train_accuracy']:.3f}",
               "img/s": f"{record['images_per_s']:.0f}", **({"mfu": f"{record['mfu']:.2f}"} if "mfu" in record else {})})

  def close(self) -> None:
    self.bar.close()
