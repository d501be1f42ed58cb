"""The full evaluation of a trained ensemble (DESIGN.md §4): test and validation metrics, OoD
detection against other datasets, and robustness on corrupted test sets.

The ensemble enters as a function ``member_probs(images uint8 [N, H, W, C]) -> [M, N, K]``, so the
same code evaluates stacked members, collected checkpoints and MC-dropout passes.

Evaluation settings (``config.evaluation``, documented in ensembles/defaults.py):
  ood_datasets         names from `data.OOD_DATASETS` (test splits); () = no OoD evaluation
  ood_examples         > 0: a fixed random subset of this many OoD images
  resize_ood           resize OoD images of another shape (`data.match_image_shape`), else an error
  corruptions          ("all",), () or names: CIFAR-10-C types for cifar10 and ImageNet-C types for
                       imagenet2012 (tfds, read per batch), else `corruptions.CORRUPTIONS`
  corruption_severities  subset of 1..5
  corruption_examples  > 0: a fixed random subset of this many test images per corrupted set
  shift_datasets       shifted test sets of the same classes (`data.SHIFT_DATASETS`: imagenet_v2,
                       imagenet_a, imagenet_r for imagenet2012), read per batch
  shift_examples       > 0: a fixed random subset of this many images per shifted set
  shift_classes        "present": each member's prediction restricted (renormalised) to the
                       classes present in the shifted set (ImageNet-A and -R: their 200, as
                       their authors evaluate), "all": the full prediction
"""
from __future__ import annotations

import types
import zlib
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ensembles import corruptions as corruptions_lib
from ensembles import data as data_lib
from ensembles import metrics as metrics_lib

MemberProbs = Callable[[np.ndarray], np.ndarray]

DEFAULTS = {"ood_datasets": (), "ood_examples": 0, "resize_ood": False, "corruptions": (),
            "corruption_severities": (1, 2, 3, 4, 5), "corruption_examples": 0, "shift_datasets": (),
            "shift_examples": 0, "shift_classes": "present"}
TFDS_CORRUPTED = {"cifar10": ("cifar10_corrupted", "test", data_lib.CIFAR10_C_CORRUPTIONS),
                  "imagenet2012": ("imagenet2012_corrupted", "validation", data_lib.IMAGENET_C_CORRUPTIONS)}
SUBSET_SEED = 0  # the fixed subsets of OoD and corrupted images are the same for every run


def settings(eval_cfg: Any = None, **fields: Any) -> types.SimpleNamespace:
  """Evaluation settings from a config block (missing fields take `DEFAULTS`) or keyword fields."""
  unknown = sorted(set(fields) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown evaluation field(s) {unknown}; allowed: {sorted(DEFAULTS)}.")
  values = dict(DEFAULTS)
  if eval_cfg is not None:
    values.update({k: eval_cfg[k] for k in DEFAULTS if k in eval_cfg})
  values.update(fields)
  return types.SimpleNamespace(**values)


def corruption_names(dataset_name: str, requested: Any) -> list[str]:
  """The corruption types to evaluate: ``requested`` names, or every type for ("all",)."""
  tfds_set = TFDS_CORRUPTED.get(dataset_name)
  available = tfds_set[2] if tfds_set else tuple(corruptions_lib.CORRUPTIONS)
  requested = list(requested)
  if requested == ["all"]:
    return list(available)
  unknown = [c for c in requested if c not in available]
  if unknown:
    source = f"tfds {tfds_set[0]}" if tfds_set else "ensembles.corruptions"
    raise ValueError(f"evaluation.corruptions has unknown type(s) {unknown} for {dataset_name} ({source}); "
                     f"allowed: ('all',), () or names from {list(available)}.")
  return requested


def check_sources(data_name: str, eval_cfg: Any, data_dir: str = "") -> None:
  """Fails fast (before training) when an OoD, shifted or tfds corrupted set of the evaluation is
  missing (none is ever downloaded)."""
  s = settings(eval_cfg)
  for name in s.ood_datasets:
    if name in data_lib.TFDS_DATASETS and name != "fashion_mnist":
      data_lib.check_prepared(name, data_lib.TFDS_DATASETS[name][0], data_dir)
  for name in s.shift_datasets:
    data_lib.check_prepared(name, data_lib.SHIFT_DATASETS[data_name][name], data_dir)
  if len(s.corruptions) and data_name in TFDS_CORRUPTED:
    prefix, split, _ = TFDS_CORRUPTED[data_name]
    for name in corruption_names(data_name, s.corruptions):
      for severity in s.corruption_severities:
        data_lib.check_prepared(f"{prefix}/{name}_{int(severity)}", split, data_dir)


def _fixed_subset(n_total: int, n: int) -> np.ndarray:
  if n <= 0 or n >= n_total:
    return np.arange(n_total)
  return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n_total)[:n])


# Corrupted copies of the test subset, generated in code, kept so that a comparison (many runs in one
# process) corrupts each image set once: keyed by (dataset name, CRC of the subset, corruption,
# severity); at most CORRUPTION_CACHE_BYTES in all (sets past the bound are generated and not kept).
# `clear_corruption_cache()` frees it.
CORRUPTION_CACHE_BYTES = 1 << 30
_CORRUPTED_CACHE: dict[tuple, np.ndarray] = {}


def clear_corruption_cache() -> int:
  """Frees the corrupted image sets kept in memory; returns the number of bytes freed."""
  freed = sum(v.nbytes for v in _CORRUPTED_CACHE.values())
  _CORRUPTED_CACHE.clear()
  return freed


def corrupted_sets(data: data_lib.Dataset, names: list[str], severities: Any, num_examples: int,
                   data_dir: str = "") -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
  """Yields (corruption, severity, images, labels): tfds CIFAR-10-C for cifar10, tfds ImageNet-C for
  imagenet2012 (an `ImageView` read per batch), else the test set (a fixed subset of
  ``num_examples``) corrupted in code. Generated sets are kept in memory (up to
  ``CORRUPTION_CACHE_BYTES``; `clear_corruption_cache` frees them) so that a comparison corrupts
  each image set once."""
  if data.name in TFDS_CORRUPTED:
    prefix, split, _ = TFDS_CORRUPTED[data.name]
    for name in names:
      for severity in severities:
        if data.name == "cifar10":
          xc, yc = data_lib.load_cifar10_corrupted(name, int(severity), data_dir)
        else:
          xc, yc = data_lib.streamed_test_set(f"{prefix}/{name}_{int(severity)}", split, data.image_shape, data_dir)
        keep = _fixed_subset(len(yc), num_examples)
        yield name, int(severity), xc.take(keep, axis=0), yc[keep]
    return
  idx = _fixed_subset(len(data.y_test), num_examples)
  x, y = data.x_test[idx], data.y_test[idx]
  fingerprint = (data.name, zlib.crc32(np.ascontiguousarray(x).tobytes()))
  for name in names:
    for severity in severities:
      key = (*fingerprint, name, int(severity))
      if key not in _CORRUPTED_CACHE:
        images = corruptions_lib.corrupt(x, name, int(severity))
        if sum(v.nbytes for v in _CORRUPTED_CACHE.values()) + images.nbytes <= CORRUPTION_CACHE_BYTES:
          _CORRUPTED_CACHE[key] = images
      else:
        images = _CORRUPTED_CACHE[key]
      yield name, int(severity), images, y


def ood_evaluation(member_probs: MemberProbs, data: data_lib.Dataset, test_probs: np.ndarray, s: Any,
                   weights: Any = None, data_dir: str = "") -> dict:
  """{ood_dataset: {score: {auroc, aupr, fpr95}, "num_examples": n}} with the in-distribution test
  set (``test_probs`` [M, N, K]) as negatives and each OoD test set as positives."""
  out = {}
  for name in s.ood_datasets:
    if name == data.name:
      raise ValueError(f"evaluation.ood_datasets contains the in-distribution dataset {name!r}.")
    x, _ = data_lib.load_test_split(name, data_dir)
    x = x[_fixed_subset(len(x), s.ood_examples)]
    x = data_lib.match_image_shape(x, data.image_shape, s.resize_ood, f"OoD dataset {name!r}")
    out[name] = {**metrics_lib.ood_detection(test_probs, member_probs(x), weights), "num_examples": len(x)}
  return out


def shift_evaluation(member_probs: MemberProbs, data: data_lib.Dataset, s: Any, weights: Any = None,
                     combine: str = "mean", data_dir: str = "") -> dict:
  """{shifted set: ensemble accuracy, NLL, ECE, Brier, "num_examples" and "num_classes"} on each
  of ``s.shift_datasets`` (a fixed subset of ``s.shift_examples`` images when > 0), with
  ``s.shift_classes`` (see `restrict_to_classes`)."""
  out = {}
  for name in s.shift_datasets:
    x, y = data_lib.streamed_test_set(name, data_lib.SHIFT_DATASETS[data.name][name], data.image_shape, data_dir)
    keep = _fixed_subset(len(y), s.shift_examples)
    probs, labels = member_probs(x.take(keep)), y[keep]
    classes = np.unique(y) if s.shift_classes == "present" else np.arange(probs.shape[-1])
    probs, labels = restrict_to_classes(probs, labels, classes)
    ens = metrics_lib.combine_probs(probs, weights, combine)
    out[name] = {**metrics_lib.predictive_metrics(ens, labels), "num_examples": len(keep),
                 "num_classes": len(classes)}
  return out


def restrict_to_classes(member_probs: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each member's probabilities [M, N, K] restricted to ``classes`` [C] (sorted) and renormalised,
  p'_c = p_c / sum_{c' in classes} p_c' (= the softmax of the classes' logits), [M, N, C]; and the
  labels [N] as indices into ``classes``."""
  classes = np.asarray(classes)
  if len(classes) == member_probs.shape[-1]:
    return member_probs, labels
  kept = np.asarray(member_probs)[..., classes]
  return kept / kept.sum(-1, keepdims=True), np.searchsorted(classes, labels)


def corruption_evaluation(member_probs: MemberProbs, data: data_lib.Dataset, s: Any, weights: Any = None,
                          combine: str = "mean", data_dir: str = "", progress: bool = True) -> dict:
  """Ensemble accuracy, NLL, ECE and Brier on every (corruption, severity) set, their mean over
  types per severity, the overall mean, and the same metrics on the clean images of the subset:
  {"severities", "types": {name: [metrics per severity]}, "by_severity", "mean", "clean", "num_examples"}."""
  names = corruption_names(data.name, s.corruptions)
  severities = [int(v) for v in s.corruption_severities]
  per_type: dict[str, list[dict]] = {n: [] for n in names}
  idx = _fixed_subset(len(data.y_test), s.corruption_examples)  # the clean images of the same subset
  clean = metrics_lib.predictive_metrics(
      metrics_lib.combine_probs(member_probs(data.x_test[idx]), weights, combine), data.y_test[idx])
  sets = corrupted_sets(data, names, severities, s.corruption_examples, data_dir)
  for name, _, x, y in tqdm(sets, total=len(names) * len(severities), desc="corruptions", disable=not progress,
                            leave=False):
    ens = metrics_lib.combine_probs(member_probs(x), weights, combine)
    per_type[name].append(metrics_lib.predictive_metrics(ens, y))
  keys = ("accuracy", "nll", "ece", "brier")
  by_severity = [{k: float(np.mean([per_type[n][i][k] for n in names])) for k in keys} for i in range(len(severities))]
  mean = {k: float(np.mean([b[k] for b in by_severity])) for k in keys}
  return {"severities": severities, "types": per_type, "by_severity": by_severity, "mean": mean, "clean": clean,
          "num_examples": len(idx)}


def evaluate_all(member_probs: MemberProbs, data: data_lib.Dataset, eval_cfg: Any = None, weights: Any = None,
                 combine: str = "mean", data_dir: str = "", progress: bool = True) -> dict:
  """Everything DESIGN §4 asks for, for one ensemble.

  Returns {"test": evaluate_ensemble(...) (if a test split exists), "val": ... (if a validation split exists),
  "ood": ood_evaluation(...) (if ood_datasets), "corruption": corruption_evaluation(...) (if corruptions),
  "shift": shift_evaluation(...) (if shift_datasets)}.
  """
  s = settings(eval_cfg)
  out = {}
  if len(data.y_test):  # a user's data may come without a test split (then no OoD evaluation either)
    test_probs = member_probs(data.x_test)
    out["test"] = metrics_lib.evaluate_ensemble(test_probs, data.y_test, weights, combine)
  if len(data.y_val):
    out["val"] = metrics_lib.evaluate_ensemble(member_probs(data.x_val), data.y_val, weights, combine)
  if len(s.ood_datasets) and len(data.y_test):
    out["ood"] = ood_evaluation(member_probs, data, test_probs, s, weights, data_dir)
  if len(s.corruptions):
    out["corruption"] = corruption_evaluation(member_probs, data, s, weights, combine, data_dir, progress)
  if len(s.shift_datasets):
    out["shift"] = shift_evaluation(member_probs, data, s, weights, combine, data_dir)
  return out
