"""Subnetwork ensemble (Ex uno plures, Zhang, Gao & Sabuncu, 2021) -- our documented recipe.

Known: M subnetworks with non-overlapping masks found by pruning one parent, trained independently.
Our decisions (DESIGN.md §3.4), each a field of the ``subnetwork`` block (`SubnetworkOptions`):
  1. parent: one dense member trained for ``parent_fraction`` of ``training.epochs`` (its own lr
     schedule over those epochs), in ``workdir/parent``;
  2. partition: `subnetworks.partition_masks` (round-robin by score, ``granularity`` weight or unit,
     ``share_input_output``);
  3. children: start from the parent's weights (and BatchNorm statistics) under their masks and
     train for the remaining epochs with their own optimizer state, data order and augmentation, all
     M in one compiled step with `sparse.masked` keeping masked weights at zero (``workdir/children``);
  4. prediction: mean of the children's probabilities.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ensembles import collected
from ensembles import flops as flops_lib
from ensembles import members as members_lib
from ensembles import sparse
from ensembles import subnetworks
from ensembles import trainer
from ensembles.context import Run, stacked_members
from ensembles.errors import require
from ensembles.methods.base import Method, Trained, register
from ensembles.options import choice, flag, integer, number


@dataclasses.dataclass(frozen=True)
class SubnetworkOptions:
  """The ``subnetwork`` block; every default is our decision (the paper's rule is not available to us)."""

  parent_fraction: float = number(0.5, 0, 1, "()")  # parent epochs = round(fraction x training.epochs)
  granularity: str = choice("weight", subnetworks.GRANULARITIES)  # weight | unit (neurons / channels)
  score: str = choice("magnitude", subnetworks.SCORES)  # magnitude (|w| or a unit's L1 norm) | random
  share_input_output: bool = flag(True)  # first and last prunable layers kept whole by every child (as ERK
                                         #   keeps them dense; README: partitioning them cost 1.44 points on the CNN study)
  reference_epochs: int = integer(0, 0)  # train FLOPs x dense: x one dense model of this many epochs (0: training.epochs)


def split_epochs(epochs: int, options: SubnetworkOptions) -> tuple[int, int]:
  """(parent epochs, children epochs) of the ``training.epochs`` budget."""
  parent = int(round(options.parent_fraction * epochs))
  return parent, epochs - parent


def parent_phase(run: Run, options: SubnetworkOptions) -> Run:
  """The parent's run: one dense network for its share of the budget, in workdir/parent."""
  return run.phase(num_members=1, epochs=split_epochs(run.epochs, options)[0], subdir="parent", name="parent")


def child_phase(run: Run, options: SubnetworkOptions) -> Run:
  """The children's run: M masked members for the rest of the budget (streams other than the
  parent's: key_salt), in workdir/children."""
  return run.phase(sparse_training=True, epochs=split_epochs(run.epochs, options)[1], key_salt=1,
                   subdir="children", name="children")


def with_masks(run: Run, state, masks):
  """``state``'s members under their ``masks`` [M, ...] in the `sparse.masked` optimizer state."""
  return state.replace(opt_state=jax.vmap(lambda p, k: sparse.with_masks(run.tx, p, k))(state.params, masks))


def programs(run: Run, options, plan) -> None:
  """Pre-flight (`preflight.Plan`): the parent's phase, the children's (masks of the parameters'
  shape), the M children's evaluation."""
  from ensembles import preflight  # pylint: disable=g-import-not-at-top
  parent_run, child_run = parent_phase(run, options.subnetwork), child_phase(run, options.subnetwork)
  plan.training(parent_run, preflight.abstract_state(parent_run, parent_run.init_members), "parent")

  def children():
    state = child_run.init_members()
    return with_masks(child_run, state, jax.tree.map(lambda p: jnp.ones(p.shape, bool), state.params))

  state = preflight.abstract_state(child_run, children)
  plan.training(child_run, state, "children")
  plan.ensemble(child_run, state, run.num_members)


def train(run: Run, options) -> list[Trained]:
  s, m = options.subnetwork, run.num_members
  parent_epochs, child_epochs = split_epochs(run.epochs, s)
  layer_order = [c.path for c in flops_lib.layer_costs(run.model, run.data.image_shape)]
  parent_run = parent_phase(run, s)
  state = parent_run.init_members()
  # fail before training the parent if the model cannot be split (e.g. fewer units than children)
  subnetworks.partition_masks(members_lib.member(state.params, 0), m, s.granularity, s.share_input_output,
                              layer_order=layer_order)
  state, info_p = trainer.fit(parent_run, state)
  parents = [collected.member_tree(one) for one in parent_run.split_seeds(state)]  # one per seed
  masks = [seed_masks(run, s, parent, m, r.init_key, layer_order) for r, parent in zip(parent_run.seed_runs(), parents)]

  child_run = child_phase(run, s)
  children = child_run.init_members()  # not the parent's streams (key_salt)
  seeds_stacked = lambda trees: jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)  # [S·M, ...] seed-major
  masks = seeds_stacked(masks)
  params = seeds_stacked([jax.tree.map(lambda p, k: jnp.where(k, p[None], 0.0), parent["params"], own)
                          for parent, own in zip(parents, child_run.split_seeds(masks))])
  children = with_masks(child_run, children.replace(params=params), masks).replace(
      model_state=seeds_stacked([jax.tree.map(lambda x: jnp.stack([x] * m), parent["model_state"])
                                 for parent in parents]))
  children, info_c = trainer.fit(child_run, children)

  info = {"train_time_s": info_p["train_time_s"] + info_c["train_time_s"], "steps": info_p["steps"] + info_c["steps"]}
  trained = []
  # the masks passed in were donated to the train step: read them back from the optimizer state
  for r_parent, r_child, parent, members, masks in zip(
      parent_run.seed_runs(), child_run.seed_runs(), parents, child_run.split_seeds(stacked_members(children)),
      child_run.split_seeds(sparse.masks_of(children.opt_state))):
    densities = child_densities(r_child, members, masks, layer_order)
    reference = s.reference_epochs or None  # a budget larger than the single model's (ablations)
    parent_flops = r_parent.flops(1, info_p["steps"], reference_epochs=reference)
    child_flops = r_child.flops(m, info_c["steps"], densities, "static", reference_epochs=reference)
    flops = {**child_flops, "flops_rule": "dense parent + static children",
             "train_flops": parent_flops["train_flops"] + child_flops["train_flops"],
             "train_x_dense": parent_flops["train_x_dense"] + child_flops["train_x_dense"]}
    results = {"subnetwork": {"parent_epochs": parent_epochs, "child_epochs": child_epochs,
                              "child_shares": subnetworks.child_shares(masks, parent["params"], s.share_input_output,
                                                                       layer_order).tolist()}}
    trained.append(Trained(r_child.ensemble(members), info, flops, masks, results))
  return trained


def seed_masks(run: Run, s: SubnetworkOptions, parent: dict, m: int, parent_key, layer_order: list[str]):
  """The M children's disjoint masks [M, ...] of one trained ``parent`` ({"params",
  "model_state"}), with the partition's key fold_in(its run's init key, 2)."""
  masks = subnetworks.partition_masks(parent["params"], m, s.granularity, s.share_input_output, s.score,
                                      jax.random.fold_in(parent_key, 2), layer_order)
  if s.granularity == "unit":  # removed units output exactly zero, also through BatchNorm
    masks = subnetworks.silence_removed_units(run.model, {"params": parent["params"], **parent["model_state"]},
                                              masks, run.data.image_shape)
  return masks


def child_densities(run: Run, children: dict, masks, layer_order: list[str]) -> dict[str, float]:
  """Per conv/dense layer, the fraction of its multiply-accumulates the children ({"params",
  "model_state"} [M, ...]) really do, averaged over children (`flops.live_input_densities`): their
  masks, and for unit granularity also the weights reading units another child owns (zero inputs)."""
  per_child = []
  for i in range(members_lib.num_members(children["params"])):
    variables = {"params": members_lib.member(children["params"], i), **members_lib.member(children["model_state"], i)}
    per_child.append(flops_lib.live_input_densities(run.model, variables, run.data.image_shape,
                                                    members_lib.member(masks, i)))
  return {k: sum(d[k] for d in per_child) / len(per_child) for k in layer_order}


def check(config, options) -> None:
  parent, children = split_epochs(config.training.epochs, options.subnetwork)
  require(parent >= 1 and children >= 1, "subnetwork.parent_fraction",
          f"a fraction of training.epochs={config.training.epochs} that leaves >= 1 parent and >= 1 child epochs "
          f"(here {parent} and {children})", options.subnetwork.parent_fraction)


METHOD = register(Method("subnetwork_ensemble", train, {"subnetwork": SubnetworkOptions},
                         defaults={"num_members": 3}, check=check, trains_seeds=True,
                         programs=programs))
