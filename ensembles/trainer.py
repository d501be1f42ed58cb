"""The driver loop shared by methods: steps, progress bar, JSONL log, validation, checkpoints, resume.

`fit` trains a `TrainState` of M members for a number of steps with a jitted all-members step. A
rerun with the same workdir restores the newest complete checkpoint and continues from its step;
because data order and per-step randomness are functions of (seed, epoch, step), the resumed run
ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ensembles import checkpoints
from ensembles import members as members_lib
from ensembles import metrics as metrics_lib
from ensembles import train as train_lib
from ensembles.data import Dataset
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


class MetricsLog:
  """Appends one JSON object per line to ``path`` (kept across resumed runs)."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path

  def write(self, record: dict) -> None:
    if jax.process_index() != 0:  # one writer across hosts
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _mean_metrics(history: list[dict]) -> dict[str, np.ndarray]:
  """Averages per-step metrics over steps: each value [M] (gathered from all hosts)."""
  stacked = members_lib.to_host(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
  return {k: v.mean(axis=0) for k, v in stacked.items()}


def fit(state: train_lib.TrainState, train_step: Callable, predict: Callable, data: Dataset,
        cfg: Any, workdir: str, *, data_keys: jax.Array, log: MetricsLog,
        desc: str = "train", hooks: Sequence[Callable] = (),
        mesh: jax.sharding.Mesh | None = None) -> tuple[train_lib.TrainState, dict]:
  """Trains ``state`` for cfg.training.epochs epochs; returns (state, info).

  ``hooks`` run after every step as ``state = hook(state, done_steps, images, labels, idx)`` with
  the device-resident training set and the step's batch indices idx [M, B] (e.g. a sparse method's topology update every ΔT steps); they must be
  deterministic functions of the state and step so that resuming stays exact.

  With a distributed ``mesh`` the state is laid out over its ``members`` axis, the training set
  replicated and each step's idx [M, B] split over ``members`` x ``data`` (each host builds only its
  own devices' shards). On a multi-device CPU mesh each step (and hook) finishes before the next is
  dispatched (`members.synchronous_steps`).

  SIGTERM (a preemption notice) makes the loop finish its step, save a checkpoint and raise
  `Preempted`; rerunning resumes from it.

  info: {"train_time_s": wall time summed over resumed runs, "steps": total steps,
  "resumed_from": step restored from or 0}. Checkpoints go to ``workdir/checkpoints`` every
  cfg.checkpoint_every_steps steps and at the end; none is written unless every parameter is finite.
  """
  t = cfg.training
  steps_per_epoch = len(data.y_train) // t.batch_size
  total_steps = t.epochs * steps_per_epoch
  manager = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), cfg.keep_checkpoints)
  start, train_time = 0, 0.0
  state = members_lib.place(state, mesh, members_lib.MEMBER_AXIS)
  restored = checkpoints.restore_latest(manager, state)
  if restored is not None:
    state, meta = restored
    start, train_time = int(meta["step"]), float(meta["train_time_s"])
    if meta.get("total_steps", total_steps) != total_steps:
      raise ValueError(f"The checkpoint in {workdir} was written for {meta['total_steps']} steps, this config "
                       f"asks for {total_steps}; use a new --workdir.")
    print(f"Resuming from step {start}/{total_steps} ({workdir}).", file=sys.stderr)

  images, labels = members_lib.place((data.x_train, data.y_train), mesh)
  synchronous = members_lib.synchronous_steps(mesh)
  last_saved = start if restored is not None else None

  def save(step):
    nonlocal last_saved
    if not bool(train_lib.all_finite(state.params)):
      raise NonFiniteLossError(f"Non-finite parameters at step {step}; not saving. The last good "
                               f"checkpoint (step {last_saved}) in {workdir}/checkpoints is kept.")
    checkpoints.save(manager, step, state, {"step": step, "train_time_s": train_time,
                                            "total_steps": total_steps})
    last_saved = step

  history: list[dict] = []
  postfix: dict[str, str] = {}
  indices, indices_epoch = None, None
  bar = tqdm(total=total_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
             file=sys.stderr, mininterval=1.0)
  flag, restore_handler = _preemption_flag()
  try:
    tick = time.perf_counter()
    for step in range(start, total_steps):
      epoch, position = divmod(step, steps_per_epoch)
      if indices_epoch != epoch:
        indices = np.asarray(train_lib.epoch_indices(data_keys, epoch, len(data.y_train), t.batch_size,
                                                     t.shared_data_order))  # [M, steps, B] on the host
        indices_epoch = epoch
      idx = members_lib.place(indices[:, position], mesh, members_lib.MEMBER_AXIS, members_lib.DATA_AXIS)
      state, step_metrics = train_step(state, images, labels, idx)
      history.append(step_metrics)
      done = step + 1
      # validation of the state the step produced, before hooks change it (an EDST ticket is
      # validated before the global exploration that follows it)
      if done % steps_per_epoch == 0 and (done // steps_per_epoch) % cfg.eval_every_epochs == 0 \
          and len(data.y_val):
        probs = train_lib.predict_probs(predict, state, data.x_val, cfg.eval_batch_size)
        ens = metrics_lib.ensemble_probs(probs)
        val = {"step": done, "epoch": done // steps_per_epoch,
               "val_accuracy": metrics_lib.accuracy(ens, data.y_val), "val_nll": metrics_lib.nll(ens, data.y_val)}
        log.write(val)
        postfix["val_acc"] = f"{val['val_accuracy']:.3f}"
        bar.set_postfix(postfix)
      for hook in hooks:
        state = hook(state, done, images, labels, idx)
      if synchronous:
        jax.block_until_ready(state)
      bar.update(1)
      if done % cfg.log_every_steps == 0 or done == total_steps:
        averaged = _mean_metrics(history)
        history = []
        if not np.all(np.isfinite(averaged["loss"])):
          raise NonFiniteLossError(
              f"Loss became non-finite by step {done} (per member: {averaged['loss'].tolist()}). "
              f"Stopping; the last good checkpoint (step {last_saved}) in {workdir}/checkpoints is kept. "
              f"Lower training.lr or check the data.")
        record = {"step": done, "epoch": done / steps_per_epoch,
                  "train_loss": float(averaged["loss"].mean()),
                  "train_accuracy": float(averaged["accuracy"].mean()),
                  "train_loss_members": averaged["loss"].tolist()}
        log.write(record)
        postfix.update(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_accuracy']:.3f}")
        bar.set_postfix(postfix)
      stop = _should_stop(flag, done)
      if done % cfg.checkpoint_every_steps == 0 or done == total_steps or stop:
        jax.block_until_ready(state)
        train_time += time.perf_counter() - tick
        save(done)
        tick = time.perf_counter()
      if stop and done < total_steps:
        manager.wait_until_finished()
        raise Preempted(f"SIGTERM received: saved the checkpoint of step {done}/{total_steps} in "
                        f"{workdir}/checkpoints; rerun the same command to resume.")
  finally:
    restore_handler()
    bar.close()
    manager.wait_until_finished()
    manager.close()
  return state, {"train_time_s": train_time, "steps": total_steps, "resumed_from": start}
