"""The driver loop shared by methods: steps, progress bar, JSONL log, validation, checkpoints, resume.

`fit(run, state)` trains the M members of a `TrainState` for the run's epochs with its jitted
all-members step. A rerun with the same workdir restores the newest complete checkpoint and
continues from its step; because data order and per-step randomness are functions of (seed, epoch,
step), the resumed run ends with the same parameters as an uninterrupted one. The loop is made of
small steps: `_batches` (data order), `_validate`, `_Checkpoints` (restore, save), `_Progress`
(progress bar and training-metric log).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import metrics as metrics_lib
from ensembles import train as train_lib
from ensembles.context import Run
from ensembles.errors import NonFiniteLossError, Preempted  # noqa: F401  (re-exported)


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


def _mean_metrics(history: list[dict]) -> dict[str, np.ndarray]:
  """Averages per-step metrics over steps: each value [M] (gathered from all hosts)."""
  stacked = members_lib.to_host(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
  return {k: v.mean(axis=0) for k, v in stacked.items()}


def fit(run: Run, state: train_lib.TrainState, hooks: Sequence[Callable] = ()) -> tuple[train_lib.TrainState, dict]:
  """Trains ``state`` (the run's M members) for ``run.epochs`` epochs with ``run.train_step``;
  returns (state, info).

  ``hooks`` run after every step as ``state = hook(state, done_steps, images, labels, idx)`` with
  the device-resident training set and the step's batch indices idx [M, B] (e.g. a sparse method's
  topology update every ΔT steps); they must be deterministic functions of the state and step so
  that resuming stays exact.

  With a distributed mesh the state is laid out over its ``members`` axis, the training set
  replicated and each step's idx [M, B] split over ``members`` x ``data`` (each host builds only its
  own devices' shards). On a multi-device CPU mesh each step (and hook) finishes before the next is
  dispatched (`members.synchronous_steps`).

  SIGTERM (a preemption notice) makes the loop finish its step, save a checkpoint and raise
  `Preempted`; rerunning resumes from it.

  info: {"train_time_s": wall time summed over resumed runs, "steps": total steps,
  "resumed_from": step restored from or 0}. Checkpoints go to ``run.workdir/checkpoints`` every
  config.checkpoint_every_steps steps and at the end (none without a workdir); none is written
  unless every parameter is finite.
  """
  chex.assert_tree_shape_prefix((state.params, state.rng), (run.num_members,))  # [M, ...] for the run's M
  store = _Checkpoints(run)
  state = members_lib.place(state, run.mesh, members_lib.MEMBER_AXIS)
  state, start = store.restore(state)
  images, labels = members_lib.place((run.data.x_train, run.data.y_train), run.mesh)
  progress = _Progress(run, start)
  synchronous = members_lib.synchronous_steps(run.mesh)
  flag, restore_handler = _preemption_flag()
  try:
    for done, idx in _batches(run, start):
      state, step_metrics = run.train_step(state, images, labels, idx)
      progress.add(step_metrics)
      if _is_validation_step(run, done):  # the state the step produced, before hooks change it
        progress.show(_validate(run, state, done))  # (an EDST ticket before the global exploration)
      for hook in hooks:
        state = hook(state, done, images, labels, idx)
      if synchronous:
        jax.block_until_ready(state)
      progress.step(done, store)
      stop = _should_stop(flag, done)
      if done % run.config.checkpoint_every_steps == 0 or done == run.total_steps or stop:
        store.save(state, done)
      if stop and done < run.total_steps:
        store.close()
        raise Preempted(f"SIGTERM received at step {done}/{run.total_steps}: " + (
            f"saved its checkpoint in {run.workdir}/checkpoints; rerun with the same workdir to resume."
            if run.workdir else "no workdir, so nothing was saved."))
  finally:
    restore_handler()
    progress.close()
    store.close()
  return state, {"train_time_s": store.train_time(), "steps": run.total_steps, "resumed_from": start}


def _batches(run: Run, start: int) -> Iterator[tuple[int, jax.Array]]:
  """(steps done after this one, idx [M, B] on the mesh) for every step from ``start``: each
  member's shuffled order of each epoch (`train.epoch_indices`), built on the host once per epoch."""
  t = run.config.training
  indices, indices_epoch = None, None
  for step in range(start, run.total_steps):
    epoch, position = divmod(step, run.steps_per_epoch)
    if indices_epoch != epoch:
      indices = np.asarray(train_lib.epoch_indices(run.data_keys, epoch, len(run.data.y_train), t.batch_size,
                                                   t.shared_data_order))  # [M, steps, B] on the host
      indices_epoch = epoch
    yield step + 1, members_lib.place(indices[:, position], run.mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)


def _is_validation_step(run: Run, done: int) -> bool:
  epochs, rest = divmod(done, run.steps_per_epoch)
  return rest == 0 and epochs % run.config.eval_every_epochs == 0 and len(run.data.y_val) > 0


def _validate(run: Run, state: train_lib.TrainState, done: int) -> dict:
  """Validation accuracy and NLL of the members' mean prediction, written to the log."""
  ens = metrics_lib.ensemble_probs(run.member_probs(state, run.data.x_val))
  record = {"step": done, "epoch": done // run.steps_per_epoch,
            "val_accuracy": metrics_lib.accuracy(ens, run.data.y_val), "val_nll": metrics_lib.nll(ens, run.data.y_val)}
  run.log.write(record)
  return {"val_acc": f"{record['val_accuracy']:.3f}"}


class _Checkpoints:
  """The run's checkpoints (none without a workdir) and the training wall time they record."""

  def __init__(self, run: Run):
    self.run = run
    self.manager = None if run.workdir is None else checkpoints.make_manager(
        os.path.join(run.workdir, "checkpoints"), run.config.keep_checkpoints)
    self.last_saved: int | None = None
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
    self.tick = time.perf_counter()
    return state, start

  def train_time(self) -> float:
    return self.time_before + time.perf_counter() - self.tick

  def save(self, state: train_lib.TrainState, step: int) -> None:
    """Checkpoints ``state`` after ``step`` steps, unless a parameter is not finite."""
    jax.block_until_ready(state)
    if not bool(train_lib.all_finite(state.params)):
      raise NonFiniteLossError(f"Non-finite parameters at step {step}; not saving. " + self.kept())
    if self.manager is None:
      return
    elapsed = self.train_time()
    checkpoints.save(self.manager, step, state, {"step": step, "train_time_s": elapsed,
                                                 "total_steps": self.run.total_steps})
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


class _Progress:
  """Progress bar and the logged training loss and accuracy averaged over log_every_steps steps."""

  def __init__(self, run: Run, start: int):
    self.run = run
    self.history: list[dict] = []
    self.postfix: dict[str, str] = {}
    self.bar = tqdm(total=run.total_steps, initial=start, desc=run.name, unit="step", dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0)

  def add(self, step_metrics: dict) -> None:
    self.history.append(step_metrics)

  def show(self, postfix: dict) -> None:
    self.postfix.update(postfix)
    self.bar.set_postfix(self.postfix)

  def step(self, done: int, store: _Checkpoints) -> None:
    self.bar.update(1)
    if done % self.run.config.log_every_steps and done != self.run.total_steps:
      return
    averaged = _mean_metrics(self.history)
    self.history = []
    if not np.all(np.isfinite(averaged["loss"])):
      raise NonFiniteLossError(
          f"Loss became non-finite by step {done} (per member: {averaged['loss'].tolist()}). Stopping. "
          f"{store.kept()} Lower training.lr or check the data.")
    record = {"step": done, "epoch": done / self.run.steps_per_epoch,
              "train_loss": float(averaged["loss"].mean()),
              "train_accuracy": float(averaged["accuracy"].mean()),
              "train_loss_members": averaged["loss"].tolist()}
    self.run.log.write(record)
    self.show({"loss": f"{record['train_loss']:.4f}", "acc": f"{record['train_accuracy']:.3f}"})

  def close(self) -> None:
    self.bar.close()
