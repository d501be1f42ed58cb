"""Cost estimates on paper for a config: training FLOPs from the library's FLOPs counter (the
model's real shapes), and from them steps/s and wall time on a named accelerator. Nothing is run:
these are ESTIMATES that assume a model FLOPs utilisation (MFU) of the chips' datasheet peak
(`ensembles.hardware`), from FLOPs alone: per-step overheads (kernel launches, host dispatch), which
bound small networks, are not modelled, so their times are lower bounds. The default 20% is about what NVIDIA publishes for ResNet-50 training on an
A100 in mixed precision (about 2,700 images/s x 3 x 8.2 GFLOPs = 66 TFLOP/s of 312); small networks
at small batches reach much less (a recipe states its own assumption).

  python -m experiments.estimate --config experiments/recipes/freetickets_imagenet_resnet50_edst.py \\
      --hardware "TPU v4" --chips 32 --mfu 0.2

Seeds as members (``--seeds S --step_overhead_ms T0``): the training time of S seeds one after
another against the S seeds as S·M members of one step, with a step that costs a fixed overhead T0
(kernel launches, loop bookkeeping: an ASSUMPTION given on the command line) plus its FLOPs at the
assumed MFU: S·(T0 + t) against T0 + S·t per step, t = 3 · f · networks · B / (chips · peak · MFU).
Compiles (S against 1) and evaluation (the same both ways) are not in it.

Executed FLOPs count what the accelerator computes: 3 x the dense forward FLOPs per trained image
(forward + two gradients; sparse methods run dense math on masked weights), for every network the
method trains, plus the forward passes it needs besides (CBNN's training-set predictions, EDST's
validation for ticket selection is left out). The papers' accounting counts sparse FLOPs (DESIGN
§5: ERK densities of the config's sparsity; subnetwork children at about 1/M of the dense FLOPs
each) as a multiple of one dense model's training; `results.json` reports it exactly after a run.
"""
from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp

from ensembles import data as data_lib
from ensembles import flops as flops_lib
from ensembles import hardware
from ensembles import methods
from ensembles import models as models_lib
from ensembles import sparse
from ensembles import subnetworks

TRAIN_EXAMPLES, IMAGE_SHAPES = data_lib.TRAIN_EXAMPLES, data_lib.IMAGE_SHAPES


def trained_networks(config: Any) -> tuple[float, int]:
  """(network-epochs trained in all, networks trained together in one step) of the config's method."""
  m, epochs, method = config.num_members, config.training.epochs, config.method
  if method in ("deep_ensemble", "dst_ensemble", "static_sparse_ensemble", "swa"):
    return m * epochs, m
  if method in ("batch_ensemble", "treenet"):  # one network running its M members on the repeated batch (as executed)
    return m * epochs, 1
  if method == "mimo":  # one network; r·B rows per step
    return config.mimo.batch_repetitions * epochs, 1
  if method == "subnetwork_ensemble":
    parent = round(config.subnetwork.parent_fraction * epochs)
    return parent + m * (epochs - parent), m
  return epochs, 1  # single, mc_dropout, snapshot_ensemble, snapshot_boosting, cbnn, edst_ensemble, fge


def subnetwork_child_forward(config: Any, model, shape: tuple) -> float:
  """One child's forward FLOPs per example: each partitioned layer at 1/M of its weights, the input
  and output layers whole where ``subnetwork.share_input_output`` (an estimate at unit level, where
  a removed unit also silences the next layer's inputs: `flops.live_input_densities`)."""
  costs = flops_lib.layer_costs(model, shape)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))
  parts = subnetworks.partitioned_kernels(variables["params"], config.subnetwork.share_input_output,
                                          [c.path for c in costs])
  return flops_lib.forward_flops(costs, {path: 1.0 / config.num_members for path in parts})


def estimate(config: Any, hardware_name: str = "TPU v4", chips: int = 8, mfu: float = 0.2,
             train_examples: int | None = None) -> dict:
  """The estimate of one config on ``chips`` chips of ``hardware_name`` at utilisation ``mfu``."""
  d, t = config.dataset, config.training
  num_classes = data_lib.TFDS_DATASETS[d.name][1]
  shape = (d.image_size, d.image_size, 3) if d.get("image_size", 0) else IMAGE_SHAPES[d.name]
  fields = {k: v for k, v in config.model.items() if k != "name"}
  model = models_lib.build_model(config.model.name, num_classes, fields)
  model = methods.get_method(config.method).build_network(model, config)  # e.g. MIMO's wider first and last layers
  forward = flops_lib.forward_flops(flops_lib.layer_costs(model, shape))  # one row of the network
  n = (train_examples or TRAIN_EXAMPLES[d.name]) - d.val_size
  if d.get("imbalance_ratio", 1.0) != 1.0:  # long-tailed: n_c = n_max·ρ^(−c/(K−1)) from a balanced n / K
    n = sum(data_lib.long_tailed_counts(n // num_classes, num_classes, float(d.imbalance_ratio)))
  steps_per_epoch = n // t.batch_size
  network_epochs, together = trained_networks(config)
  images = network_epochs * steps_per_epoch * t.batch_size
  extra = config.num_members * n * forward if config.method == "cbnn" else 0.0  # reweighting passes
  train_flops = 3.0 * forward * images + extra
  dtype = t.get("compute_dtype", "float32")
  peak = hardware.PEAK_FLOPS[hardware_name].get(dtype)
  if peak is None:
    raise ValueError(f"No {dtype} peak for {hardware_name!r} in ensembles/hardware.py.")
  throughput = chips * peak * mfu
  steps = network_epochs * steps_per_epoch / together  # compiled steps (members trained together share one)
  steps_per_s = throughput / (3.0 * forward * together * t.batch_size)
  # the papers' accounting (DESIGN §5): sparse FLOPs of the trained networks over one dense model's
  f_sparse, updates = forward, 0
  if config.method in ("dst_ensemble", "static_sparse_ensemble", "edst_ensemble"):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))
    densities = sparse.layer_densities(sparse.prunable_shapes(variables["params"]), 1 - config.sparse.sparsity,
                                       config.sparse.density_rule)
    f_sparse = flops_lib.forward_flops(flops_lib.layer_costs(model, shape), densities)
    if config.method != "static_sparse_ensemble" and config.sparse.growth == "gradient":
      updates = int(network_epochs * steps_per_epoch // config.sparse.update_every)
  network_steps = network_epochs * steps_per_epoch
  sparse_flops = flops_lib.sparse_training_flops(forward, f_sparse, network_steps, t.batch_size, updates) + extra
  if config.method == "subnetwork_ensemble":
    parent = round(config.subnetwork.parent_fraction * t.epochs)
    child_steps = config.num_members * (t.epochs - parent) * steps_per_epoch
    child = subnetwork_child_forward(config, model, shape)
    sparse_flops = 3.0 * t.batch_size * (forward * parent * steps_per_epoch + child * child_steps)
  block = {"edst_ensemble": "edst", "subnetwork_ensemble": "subnetwork"}.get(config.method)
  reference = (config[block].reference_epochs if block else 0) or t.epochs
  dense_flops = 3.0 * forward * reference * steps_per_epoch * t.batch_size
  return {"forward_gflops": forward / 1e9, "train_pflops": train_flops / 1e15,
          "paper_train_pflops": sparse_flops / 1e15, "paper_x_dense": sparse_flops / dense_flops,
          "steps": int(round(steps)), "steps_per_s": steps_per_s,
          "images_per_s": steps_per_s * together * t.batch_size,  # what the input pipeline must deliver
          "hours": train_flops / throughput / 3600, "hardware": hardware_name, "chips": chips, "mfu": mfu,
          "compute_dtype": dtype}


MFU_REASONS = {  # model name -> why the recipe assumes its MFU
    "imagenet_resnet": "NVIDIA publishes about that for ResNet-50 on an A100",
    "wide_resnet": "ResNet-50's figure, for a wide network of similar arithmetic intensity",
    "resnet": "a narrow 16-64-channel network at batch 128 keeps a large GPU mostly idle",
    "efficientnet_b0": "depthwise convolutions on 32x32 inputs keep a large GPU mostly idle"}


def seeds_speedup(result: dict, seeds: int, step_overhead_s: float) -> dict:
  """Training time of ``seeds`` seeds one after another and as members of one step (see the module
  docstring), from `estimate`'s result: per-step compute t = 1 / steps_per_s."""
  t = 1.0 / result["steps_per_s"]
  alone = seeds * result["steps"] * (step_overhead_s + t)
  together = result["steps"] * (step_overhead_s + seeds * t)
  return {"seeds": seeds, "step_compute_ms": 1e3 * t, "step_overhead_ms": 1e3 * step_overhead_s,
          "one_after_another_h": alone / 3600, "as_members_h": together / 3600, "ratio": alone / together}


def _num(x: float) -> str:
  """Three significant figures at most, thousands separated."""
  return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def docstring_block(path: str, hardware_name: str, chips: int, mfu: float) -> str:
  """The ESTIMATE paragraph of a recipe's docstring (tests/test_recipes.py checks each is current)."""
  config = load_config(path)
  r = estimate(config, hardware_name, chips, mfu)
  why = f" ({MFU_REASONS[config.model.name]})" if config.model.name in MFU_REASONS else ""
  return (f"ESTIMATE (on paper, not measured): {chips} x {hardware_name}, {r['compute_dtype']}, assuming MFU "
          f"{mfu:.0%}\n{why.strip()}:\n{r['forward_gflops']:.2f} forward GFLOPs per image; "
          f"{_num(r['train_pflops'])} PFLOPs executed "
          f"(dense math on masked weights), {_num(r['paper_train_pflops'])} in the papers' sparse\naccounting "
          f"({r['paper_x_dense']:.2f}x one dense model); {r['steps']:,} steps at {r['steps_per_s']:.1f} steps/s "
          f"({r['images_per_s']:,.0f} images/s from the input\npipeline), {_num(r['hours'])} hours.\n"
          f"  python -m experiments.estimate --config {path} \\\\\n"
          f"      --hardware \"{hardware_name}\" --chips {chips} --mfu {mfu}")


def load_config(path: str) -> Any:
  spec = importlib.util.spec_from_file_location("recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def row(path: str, result: dict) -> str:
  return (f"| {path} | {result['forward_gflops']:.3g} | {_num(result['train_pflops'])} | "
          f"{_num(result['paper_train_pflops'])} ({result['paper_x_dense']:.2f}x) | {result['steps']:,} | "
          f"{result['steps_per_s']:.1f} | {result['images_per_s']:,.0f} | {_num(result['hours'])} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", nargs="+", required=True, help="config files")
  parser.add_argument("--hardware", default="TPU v4", choices=sorted(hardware.PEAK_FLOPS))
  parser.add_argument("--chips", type=int, default=8)
  parser.add_argument("--mfu", type=float, default=0.2, help="assumed model FLOPs utilisation")
  parser.add_argument("--seeds", type=int, default=0, help="S > 1: also estimate S seeds as members (module docstring)")
  parser.add_argument("--step_overhead_ms", type=float, default=0.0, help="assumed fixed cost of one step (ms)")
  args = parser.parse_args(argv)
  if args.seeds > 1:
    print(f"ESTIMATES (not measured): {args.seeds} seeds as members on {args.chips} x {args.hardware}, MFU "
          f"{args.mfu:.0%}, assumed step overhead {args.step_overhead_ms} ms; training steps only\n")
    print("| config | steps | compute per step (ms) | one after another (h) | as members (h) | ratio |")
    print("|---|---|---|---|---|---|")
    for path in args.config:
      r = estimate(load_config(path), args.hardware, args.chips, args.mfu)
      e = seeds_speedup(r, args.seeds, args.step_overhead_ms / 1e3)
      print(f"| {path} | {r['steps']:,} | {e['step_compute_ms']:.3g} | {e['one_after_another_h']:.3g} | "
            f"{e['as_members_h']:.3g} | {e['ratio']:.2f} |")
    return
  print(f"ESTIMATES (not measured): {args.chips} x {args.hardware}, MFU {args.mfu:.0%} of the datasheet peak\n")
  print("| config | forward GFLOPs / image | executed training PFLOPs | papers' accounting PFLOPs (x dense) | steps | "
        "steps/s | images/s | hours |")
  print("|---|---|---|---|---|---|---|---|")
  for path in args.config:
    print(row(path, estimate(load_config(path), args.hardware, args.chips, args.mfu)))


if __name__ == "__main__":
  main()
