"""What a method is: a registered value naming its recipe, its options and their checks.

A recipe is ``train(run, options) -> Trained``: it trains with the frozen run context
(`ensembles.context.Run`) and returns the ensemble it built, how long it trained and its FLOPs; the
library evaluates, saves and reports it (`ensembles.api`). A recipe that can train several seeds as
members (``Method.trains_seeds``: every built-in one) returns a list of one `Trained` per seed of
``run.seeds``, in order (`Run.split_seeds`, `Run.seed_runs`). ``options`` is an instance of the method's
namespace of the method's option dataclasses (`ensembles.options`), one per config block, e.g.
``options.sparse.sparsity``.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

from ensembles import ensemble as ensemble_lib
from ensembles import options as options_lib
from ensembles.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Trained:
  """A recipe's outcome. info: {"train_time_s", "steps"}; flops: `Run.flops` (None: M dense
  members trained info["steps"] steps); masks: stacked masks of sparse members (their nonzero
  counts are reported); results: method-specific entries added to the results; num_members: the
  reported ensemble size when it is not the stacked members' (MC dropout's passes)."""

  ensemble: ensemble_lib.Ensemble
  info: dict
  flops: dict | None = None
  masks: Any = None
  results: dict = dataclasses.field(default_factory=dict)
  num_members: int | None = None


@dataclasses.dataclass(frozen=True)
class Method:
  """name: the registry key (``config.method``). train: the recipe. options: {config block: option
  dataclass} (e.g. {"sparse": SparseOptions}). defaults: {dotted config field: value} a run of
  this method starts from (e.g. its ensemble size). check(config, options): rules across blocks
  (e.g. the ensemble size a method allows). predictor(run, options): the evaluation predictor of a
  saved ensemble when it is not the plain one (MC dropout's T passes). derived(config): {dotted
  field: value} that follow from other fields unless a user sets them (EDST's epochs).
  network(model, config, options): the network the method trains and saves when it is not the
  given model (BatchEnsemble's, MIMO's and TreeNet's wrappers of it). takes_member_networks: whether
  a given model may itself hold several members (`models.multi_member`; False where the recipe reads
  one prediction per network, e.g. CBNN's reweighting). trains_seeds: the recipe handles a run of
  several seeds as members (`context.Run`) and returns one `Trained` per seed. trains_one_network:
  its steps train one network per seed, not M (checkpoint, snapshot and ticket methods, the networks
  that hold M members): what `memory.seeds_fit` sizes. programs(run, options, plan): adds to a
  `preflight.Plan` every program the recipe executes, built with the recipe's own phases and
  factories (None: one phase, the run itself, and the evaluation of its M members)."""

  name: str
  train: Callable[[Any, Any], Trained]
  options: Mapping[str, type] = dataclasses.field(default_factory=dict)
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any, Any], None] | None = None
  predictor: Callable[[Any, Any], Callable] | None = None
  derived: Callable[[Any], Mapping[str, Any]] | None = None
  network: Callable[[Any, Any, Any], Any] | None = None
  takes_member_networks: bool = True
  trains_seeds: bool = False
  trains_one_network: bool = False
  programs: Callable[[Any, Any, Any], None] | None = None

  def read_options(self, config: Any) -> types.SimpleNamespace:
    """The method's options from its config blocks (a missing block or field: the default)."""
    return types.SimpleNamespace(**{block: options_lib.from_block(cls, config.get(block), block)
                                    for block, cls in self.options.items()})

  def build_network(self, model: Any, config: Any) -> Any:
    """The network this method trains for ``model`` (``model`` itself unless it wraps it)."""
    return model if self.network is None else self.network(model, config, self.read_options(config))

  def validate(self, config: Any) -> Any:
    """Checks the method's block and cross-block rules; returns the options."""
    options = self.read_options(config)
    if self.check is not None:
      self.check(config, options)
    return options


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to the registry under its name (refusing a second method of that name)."""
  if method.name in METHODS and METHODS[method.name] is not method:
    raise ValueError(f"A method named {method.name!r} is already registered.")
  METHODS[method.name] = method
  return method


def get_method(name: str | Method) -> Method:
  if isinstance(name, Method):
    return name
  if name not in METHODS:
    raise ConfigError(f"config.method must be one of {sorted(METHODS)}, got {name!r}.")
  return METHODS[name]
