"""Health checks of a run: signals that a member diverged, collapsed or stopped learning, caught
while it trains and named with its seed, member and step.

A run whose loss stays finite can still be broken: a loss spike after a topology update kills the
ReLUs, the network predicts the majority class for the rest of training, and a table averages it
in. These checks catch that (thresholds: the ``health`` block, `HealthOptions`):

  loss_spike        a step's training loss (unweighted cross-entropy) L_t > spike_factor · median of
                    the member's previous spike_window step losses, and L_t > ln K (worse than a
                    uniform prediction); judged once the window holds spike_window / 2 steps
  chance_accuracy   a member's accuracy <= max(1/K, majority-class rate) + chance_margin
                    (validation during training: at validation_patience validations in a row, so
                    a slow first epoch is no flag; the test set at the end: at once)
  one_class         one class takes > max_class_share of a member's predictions while it holds
                    fewer of the labels (the same patience)
  chance_checkpoint a boosting checkpoint's weighted training error >= 1 − 1/K − chance_margin
                    (no better than chance on the weighted data; SAMME clips it to keep α > 0)
  degenerate_weights  a boosting update's sample weights with effective size
                    ESS = (Σw)² / (N·Σw²) < min_weight_ess (nearly all weight on a few examples)

``training.on_unhealthy``: ``warn`` (default) records each signal once per phase, seed, member
(in the log as an ``unhealthy`` event, on the progress bar, on stderr and in results.json under
``health``); ``stop`` raises `UnhealthyRunError` with one line naming them, before the checkpoint
of that step is written, so the last good checkpoint stays the newest. The final test-set check
comes after training and only records.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Sequence

import numpy as np

from ensembles.errors import ConfigError, UnhealthyRunError, is_number
from ensembles.options import from_block, integer, number, option

ON_UNHEALTHY = ("warn", "stop")
SIGNALS = ("loss_spike", "chance_accuracy", "one_class", "chance_checkpoint", "degenerate_weights")


@dataclasses.dataclass(frozen=True)
class HealthOptions:
  """The ``health`` block: thresholds of the signals (the module docstring); our choices."""

  spike_factor: float = option(5.0, "a number > 1", lambda v: is_number(v) and v > 1)
  spike_window: int = integer(50, 2)          # previous step losses the median is taken over
  chance_margin: float = number(0.02, 0, 1)   # accuracy this close to chance (or the majority rate) is chance
  max_class_share: float = number(0.9, 0, 1, "(]")  # more predictions than this in one class: collapsed
  min_weight_ess: float = number(0.01, 0, 1)  # boosting weights' effective sample size fraction
  validation_patience: int = integer(2, 1)    # validations in a row a member must show a signal


def read(config: Any) -> tuple[HealthOptions, str]:
  """The config's health thresholds and ``training.on_unhealthy`` (checked)."""
  options = from_block(HealthOptions, config.get("health"), "health")
  on = config.training.get("on_unhealthy", "warn")
  if on not in ON_UNHEALTHY:
    raise ConfigError(f"config.training.on_unhealthy must be one of {ON_UNHEALTHY}, got {on!r}.")
  return options, on


# --- pure signal functions (numpy, host side) ------------------------------------------------------

def chance_rate(labels: np.ndarray, num_classes: int) -> float:
  """max(1/K, share of the most frequent label): the accuracy of guessing, or of always answering
  the majority class."""
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  return max(1.0 / num_classes, float(counts.max()) / max(len(labels), 1))


def prediction_signals(member_probs: np.ndarray, labels: np.ndarray, options: HealthOptions) -> list[dict]:
  """For member probabilities [M, N, K] and labels [N]: per member, the signals it shows
  ({"member", "signal", "value", "limit"}): chance_accuracy and one_class."""
  member_probs = np.asarray(member_probs)
  labels = np.asarray(labels)
  k = member_probs.shape[-1]
  out = []
  for m, probs in enumerate(member_probs):
    predicted = probs.argmax(-1)
    share = np.bincount(predicted, minlength=k) / len(predicted)
    out += member_signals(m, float(np.mean(predicted == labels)), int(share.argmax()), float(share.max()), labels, k,
                          options)
  return out


def member_signals(member: int, accuracy: float, top_class: int, top_share: float, labels: np.ndarray,
                   num_classes: int, options: HealthOptions) -> list[dict]:
  """The signals of one member whose predictions have ``accuracy`` and put ``top_share`` of the
  examples in class ``top_class``: chance_accuracy (accuracy <= chance_rate + chance_margin) and
  one_class (top_share > max_class_share, where the class holds fewer of the ``labels``)."""
  out = []
  limit = chance_rate(labels, num_classes) + options.chance_margin
  if accuracy <= limit:
    out.append({"member": member, "signal": "chance_accuracy", "value": accuracy, "limit": limit})
  label_share = float(np.mean(np.asarray(labels) == top_class))
  if top_share > options.max_class_share and label_share < options.max_class_share:
    out.append({"member": member, "signal": "one_class", "value": top_share, "limit": options.max_class_share,
                "class": top_class})
  return out


def loss_spikes(window: np.ndarray, losses: np.ndarray, options: HealthOptions, num_classes: int
                ) -> tuple[list[tuple[int, int, float, float]], np.ndarray]:
  """Scans step losses [T, M] after the previous ones ``window`` [W', M] (W' <= spike_window, oldest
  first). Returns ((t, member, loss, median) of every spike, the new window). A spike:
  L_t > spike_factor · median(window) and L_t > ln K, judged once the window holds
  spike_window / 2 steps; non-finite losses are left to the trainer's own check."""
  spikes = []
  floor = math.log(num_classes)
  window = np.asarray(window, np.float64).reshape(-1, losses.shape[1])
  for t, row in enumerate(np.asarray(losses, np.float64)):
    if len(window) >= options.spike_window // 2:
      median = np.median(window, axis=0)
      for m in np.flatnonzero((row > options.spike_factor * median) & (row > floor)):
        spikes.append((t, int(m), float(row[m]), float(median[m])))
    if np.all(np.isfinite(row)):
      window = np.concatenate([window, row[None]])[-options.spike_window:]
  return spikes, window


def effective_sample_fraction(weights: np.ndarray) -> np.ndarray:
  """(Σw)² / (N·Σw²) of sample weights [..., N]: 1 for equal weights, 1/N for all weight on one."""
  w = np.asarray(weights, np.float64)
  return w.sum(-1) ** 2 / (w.shape[-1] * np.square(w).sum(-1))


# --- the monitor of one run ------------------------------------------------------------------------

class Monitor:
  """Collects the health flags of a run and all its phases (`context.Run.health`); with
  on_unhealthy="stop" the first flag raises `UnhealthyRunError`. A flag: {"signal", "phase",
  "seed", "member", "step", "value", "limit", ...}; one per (phase, signal, seed, member)."""

  def __init__(self, options: HealthOptions, on_unhealthy: str = "warn"):
    self.options, self.on_unhealthy = options, on_unhealthy
    self.flags: list[dict] = []
    self.streaks: dict[tuple, int] = {}  # (phase, signal, stacked member): validations in a row showing it

  @classmethod
  def from_config(cls, config: Any) -> "Monitor":
    return cls(*read(config))

  def record(self, run, signal: str, step: int, flags: Sequence[dict], per_seed: int | None = None) -> list[dict]:
    """Adds ``flags`` (each {"member": stacked index, "value", "limit", ...}) of ``signal`` at
    ``step`` in ``run``'s phase; the stacked index is seed-major, ``per_seed`` (default the run's
    M) members per seed. Returns the new ones (not seen before for that member); raises with
    on_unhealthy="stop"."""
    per_seed = per_seed or run.num_members
    new = []
    seen = {(f["phase"], f["signal"], f["seed"], f["member"]) for f in self.flags}
    for f in flags:
      seed, member = int(run.seeds[f["member"] // per_seed]), f["member"] % per_seed
      flag = {**f, "signal": signal, "phase": run.name, "seed": seed, "member": member, "step": int(step)}
      flag["message"] = describe(flag)
      if (flag["phase"], signal, seed, member) in seen:
        continue
      seen.add((flag["phase"], signal, seed, member))
      new.append(flag)
    self.flags.extend(new)
    for flag in new:
      run.log.write({"step": int(step), "event": "unhealthy", **{k: v for k, v in flag.items() if k != "step"}})
    if new and self.on_unhealthy == "stop":
      raise UnhealthyRunError("Unhealthy run (training.on_unhealthy='stop'): " + "; ".join(f["message"] for f in new)
                              + ".")
    import jax  # pylint: disable=g-import-not-at-top  (the signal functions above need no JAX)
    for flag in new if jax.process_index() == 0 else ():  # every host finds the same flags; one prints them
      print(f"warning: unhealthy run: {flag['message']} (training.on_unhealthy='warn': training goes on).",
            file=sys.stderr)
    return new

  def validation(self, run, step: int, member_probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """chance_accuracy / one_class of the run's members [S·M, N, K] on the validation set (a
    network of M' members: S·M·M' rows)."""
    found = prediction_signals(member_probs, labels, self.options)
    shown = {(run.name, f["signal"], f["member"]) for f in found}
    self.streaks = {key: self.streaks.get(key, 0) + 1 for key in shown} | {
        key: n for key, n in self.streaks.items() if key[0] != run.name}  # another phase's streaks stay
    per_seed = len(member_probs) // run.num_seeds
    new = []
    for signal in ("chance_accuracy", "one_class"):
      new += self.record(run, signal, step, [
          {k: v for k, v in f.items() if k != "signal"} | {"on": "validation"} for f in found
          if f["signal"] == signal and self.streaks[(run.name, signal, f["member"])] >= self.options.validation_patience],
          per_seed)
    return new

  def boosting(self, run, step: int, errors: np.ndarray, weights: np.ndarray) -> list[dict]:
    """chance_checkpoint / degenerate_weights of a boosting update: weighted errors [S] and the new
    sample weights [S, N] of each seed's network."""
    k = run.data.num_classes
    limit = 1.0 - 1.0 / k - self.options.chance_margin
    chance = [{"member": s * run.num_members, "value": float(e), "limit": limit}
              for s, e in enumerate(np.asarray(errors)) if e >= limit]
    ess = effective_sample_fraction(weights)
    degenerate = [{"member": s * run.num_members, "value": float(v), "limit": self.options.min_weight_ess}
                  for s, v in enumerate(ess) if v < self.options.min_weight_ess]
    return self.record(run, "chance_checkpoint", step, chance) + self.record(run, "degenerate_weights", step, degenerate)

  def report(self, seed: int) -> dict:
    """results.json's ``health`` of one seed: {"status": "healthy" | "unhealthy", "flags": [...]}."""
    flags = sorted((f for f in self.flags if f["seed"] == seed), key=lambda f: f["step"])
    return {"status": "unhealthy" if flags else "healthy", "flags": flags}

  def state(self) -> dict:
    """The flags and validation streaks so far (saved with each checkpoint, so a resumed run
    reports what the uninterrupted one would)."""
    return {"flags": list(self.flags), "streaks": [[*key, n] for key, n in self.streaks.items()]}

  def restore(self, state: dict) -> None:
    """A checkpoint's `state`: adds its flags not already held, and takes its streaks."""
    held = {(f["phase"], f["signal"], f["seed"], f["member"]) for f in self.flags}
    self.flags.extend(f for f in state["flags"] if (f["phase"], f["signal"], f["seed"], f["member"]) not in held)
    self.streaks.update({(phase, signal, int(m)): int(n) for phase, signal, m, n in state["streaks"]})


def final_check(report: dict, seed: int, test: dict | None, labels: np.ndarray, options: HealthOptions) -> dict:
  """``report`` (`Monitor.report`) with the test-set signals of the finished ensemble's members added
  (phase "test", step None), read from its test evaluation (`metrics.evaluate_ensemble`: each
  member's accuracy, top_class, top_class_share); recorded, never raised (training is over)."""
  flags = list(report["flags"])
  if test is not None and len(labels):
    k = len(test["ensemble"]["per_class_accuracy"])
    for m, entry in enumerate(test["members"]):
      for f in member_signals(m, entry["accuracy"], entry["top_class"], entry["top_class_share"], labels, k, options):
        flag = {**f, "phase": "test", "seed": seed, "step": None, "on": "test"}
        flag["message"] = describe(flag)
        flags.append(flag)
  return {"status": "unhealthy" if flags else "healthy", "flags": flags}


def describe(flag: dict) -> str:
  """One line naming a flag's seed, member, step and signal."""
  where = f"seed {flag['seed']} member {flag['member']}" + (f" ({flag['phase']})" if flag.get("phase") else "")
  when = f"step {flag['step']}" if flag.get("step") is not None else "after training"
  value, limit = flag["value"], flag["limit"]
  what = {
      "loss_spike": lambda: f"loss spike {value:.3g} > {limit:.3g} (spike_factor x running median {flag.get('median', 0):.3g})",
      "chance_accuracy": lambda: f"{flag.get('on', 'validation')} accuracy {value:.4f} <= {limit:.4f} (chance or the "
                                 "majority-class rate + health.chance_margin)",
      "one_class": lambda: f"{value:.1%} of {flag.get('on', 'validation')} predictions are class {flag.get('class')} "
                           f"(> health.max_class_share {limit})",
      "chance_checkpoint": lambda: f"boosting checkpoint's weighted training error {value:.4f} >= {limit:.4f} "
                                   "(no better than chance)",
      "degenerate_weights": lambda: f"sample weights' effective size {value:.4f} of N < health.min_weight_ess {limit}",
  }[flag["signal"]]()
  return f"{where}, {when}: {flag['signal']}: {what}"
