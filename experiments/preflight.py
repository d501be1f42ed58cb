"""Pre-flight: compile a run's programs for a TPU slice or GPU host from any machine, before paying for it.

  python -m experiments.preflight --config experiments/recipes/imagenet_resnet50_deep_ensemble.py \\
      --target v5e-16 --config.mesh.data=16 [--config.FIELD=VALUE ...] [--save DIR] [--json FILE]

For the config (any file in experiments/configs/ or experiments/recipes/, with the usual overrides)
and the target (`ensembles.targets.TARGETS`: v5e-4 ... v6e-256, h100x8, a100x8, ...), every
program the run will execute is compiled for the target's devices, without data
(`ensembles.preflight`), and printed per program and per device: argument, output, aliased,
temporary and code bytes, the total against the device's memory, XLA's FLOPs against our counter,
the collectives and the compile time. Exit status 1 when a program does not fit, with the fields
that would make it fit; 2 for a usage mistake (one line). ``--save DIR`` writes each compiled
program (`preflight.save_compiled`) for `preflight.load_compiled` on the target.

  python -m experiments.preflight --recipes [--recipe NAME ...]

compiles every recipe of experiments/recipes/ (or those named) on the target its ``PREFLIGHT``
names and prints the README's table. Results are kept per lowered program in ``--cache``
(default runs/preflight_cache; `preflight.compile_program`): a rerun compiles only what changed, so
the table can be built in parts. Needs the target's compiler: ``pip install -e ".[tpu]"`` (libtpu)
for TPU targets, ``pip install -e ".[cuda12]"`` (the CUDA plugin) for GPU targets.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import sys
import time


@contextlib.contextmanager
def quiet_native_stderr():
  """libtpu and the CUDA plugin print warnings about the missing hardware straight to file
  descriptor 2 when they load on a machine without it; pre-flight expects that. Python errors
  still propagate as exceptions."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def load_target(name: str):
  """The named target's compile-only devices (one line and exit 2 when it cannot be built)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ensembles import targets  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # the host only compiles; plugins still register their topologies
  try:
    with quiet_native_stderr():
      jax.devices()
      return targets.named(name)
  except targets.TargetError as err:
    _fail(str(err))


def load_config(path: str, overrides):
  from experiments import cli  # pylint: disable=g-import-not-at-top
  from ensembles import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config = cli.apply_overrides(cli.load_config_file(path), overrides)
    config_lib.validate(config)
  except (cli.CliError, config_lib.ConfigError) as err:
    _fail(str(err))
  return config


def check_one(config_path: str, target_name: str, overrides, save_dir: str | None = None,
              json_path: str | None = None, cache_dir: str | None = None) -> tuple[dict, int]:
  """Pre-flight of one config on one target, printed; returns (the report, exit status)."""
  from ensembles import preflight  # pylint: disable=g-import-not-at-top
  from ensembles import targets  # pylint: disable=g-import-not-at-top
  from ensembles import trainer  # pylint: disable=g-import-not-at-top
  target = load_target(target_name)
  config = load_config(config_path, overrides)
  print(f"pre-flight of {config_path} ({config.method}, M = {config.num_members}) on {target.describe()}")
  try:
    run, method, options = preflight.run_for(config, target)
    preflight.check_mesh(run, target)
    programs = preflight.plan_for(method, run, options).programs
  except (targets.TargetError, ValueError) as err:
    _fail(str(err).splitlines()[0])
  print(f"mesh {dict(run.mesh.shape)}, member execution {run.execution.mode}, {run.compute_dtype}, "
        f"batch {config.training.batch_size} per member, train program: {trainer.train_program(run)}", flush=True)
  results = []
  for program in programs:
    result = preflight.compile_program(program, target, save_dir, cache_dir)
    results.append(result)
    peak = preflight.step_time_at_peak(result, target, run.compute_dtype)
    print("  " + preflight.describe(result) + ("" if peak is None else f"; {1e3 * peak:.3g} ms at peak (ESTIMATE)"),
          flush=True)
  trains = [p for p in programs if "train" in p.name]
  advice = preflight.fit_advice(run, results, trains[-1].args[0] if trains else None)
  if advice:
    print("Does not fit. What would reduce the memory per device (check each with this command):")
    for line in advice:
      print(f"  {line}")
  report = {"config": config_path, "target": target.name, "device_kind": target.device_kind,
            "devices": target.num_devices, "hosts": target.num_hosts, "mesh": dict(run.mesh.shape),
            "member_execution": run.execution.mode, "compute_dtype": run.compute_dtype,
            "train_program": trainer.train_program(run), "overrides": [f"--config.{k}={v}" for k, v in overrides],
            "programs": [r.as_dict() for r in results], "fits": not advice}
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2)
  return report, 0 if not advice else 1


RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def recipe_preflight(path: str) -> dict:
  """A recipe's ``PREFLIGHT`` = {"target": name, "overrides": {dotted field: value}}."""
  spec = importlib.util.spec_from_file_location("recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "PREFLIGHT"):
    _fail(f"{path} names no PREFLIGHT target.")
  return module.PREFLIGHT


def run_recipes(cache_dir: str, names) -> int:
  """Pre-flight of every recipe (or ``names``) on its target; prints the README table. Programs
  compiled before (the same lowered program, target and compilers: `preflight.compile_program`)
  are read from ``cache_dir``."""
  paths = sorted(p for p in glob.glob(os.path.join(RECIPES, "*.py")) if not os.path.basename(p).startswith("_"))
  if names:
    unknown = set(names) - {os.path.basename(p)[:-3] for p in paths}
    if unknown:
      _fail(f"no recipe {sorted(unknown)} in experiments/recipes.")
    paths = [p for p in paths if os.path.basename(p)[:-3] in names]
  rows, status = [], 0
  for path in paths:
    spec = recipe_preflight(path)
    overrides = [(k, repr(v) if not isinstance(v, str) else v) for k, v in spec.get("overrides", {}).items()]
    start = time.perf_counter()
    report, code = check_one(os.path.relpath(path), spec["target"], overrides, cache_dir=cache_dir)
    print(f"  ({time.perf_counter() - start:.0f} s)\n", flush=True)
    status = max(status, code)
    rows.append(report)
  print(table(rows))
  total = sum(p["lower_s"] + p["compile_s"] for r in rows for p in r["programs"])
  print(f"\nCompile time of all {sum(len(r['programs']) for r in rows)} programs on this machine: {total / 60:.1f} min "
        "(as measured when each was compiled; cached ones are not compiled again).")
  return status


def table(reports) -> str:
  """The README table: one row per recipe (its train program), the largest program's memory."""
  from ensembles import hardware  # pylint: disable=g-import-not-at-top
  lines = ["| recipe | target | mesh (members x data) | programs | train program: GiB per device | largest program: "
           "GiB per device | fits | XLA / our FLOPs per step | step at peak, ms (ESTIMATE) | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    programs = r["programs"]
    train = next(p for p in programs if "train" in p["name"] and not p["name"].startswith("parent"))
    largest = max(programs, key=lambda p: p["memory_bytes"] or 0)
    peak = hardware.peak_flops(type("D", (), {"device_kind": r["device_kind"]})(), r["compute_dtype"])
    at_peak = "-" if not (peak and train["xla_flops"]) else f"{1e3 * train['xla_flops'] / peak:.3g}"
    ratio = "-" if train["flops_ratio"] is None else f"{train['flops_ratio']:.3f}"
    hbm = (train["device_bytes"] or 0) / 2**30
    name = os.path.basename(r["config"])[:-3]
    lines.append(
        f"| {name} | {r['target']} ({r['devices']} x {r['device_kind']}, {hbm:.2f} GiB) | "
        f"{r['mesh']['members']} x {r['mesh']['data']} | {len(programs)} | {(train['memory_bytes'] or 0) / 2**30:.2f} | "
        f"{(largest['memory_bytes'] or 0) / 2**30:.2f} ({largest['name']}) | {'yes' if r['fits'] else 'NO'} | {ratio} | "
        f"{at_peak} | {sum(p['lower_s'] + p['compile_s'] for p in programs):.0f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  with quiet_native_stderr():  # the CUDA plugin, where installed, announces the missing GPU at import
    importlib.import_module("jax")
  from experiments import cli  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else argv
  try:
    rest, overrides = cli.split_overrides(argv)
  except cli.CliError as err:
    _fail(str(err))
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", help="config file (experiments/configs/*.py or experiments/recipes/*.py)")
  parser.add_argument("--target", help="a named target (ensembles/targets.py), e.g. v5e-16, v4-32, h100x8")
  parser.add_argument("--save", default=None, help="folder for the serialised compiled programs")
  parser.add_argument("--json", default=None, help="write the report as JSON")
  parser.add_argument("--recipes", action="store_true", help="every recipe on its PREFLIGHT target: the README table")
  parser.add_argument("--recipe", nargs="*", default=(), help="with --recipes: only these (file names without .py)")
  parser.add_argument("--cache", default="runs/preflight_cache",
                      help="folder of results kept per compiled program ('' = none); see preflight.compile_program")
  args = parser.parse_args(rest)
  if args.recipes:
    sys.exit(run_recipes(args.cache or None, args.recipe))
  if not args.config or not args.target:
    _fail("give --config FILE and --target NAME (or --recipes).")
  _, status = check_one(args.config, args.target, overrides, args.save, args.json, args.cache or None)
  sys.exit(status)


if __name__ == "__main__":
  main()
