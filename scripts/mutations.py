"""The curated mutations of `scripts/mutation_test.py`: plausible bugs, each a small edit of one file
(``before`` must occur exactly once in it), and the tests that must catch it.

Keep ``tests`` narrow (the tests written for that behaviour), so the whole check stays minutes long.
When a refactor moves the code, update ``before``/``after``; the runner stops on a stale entry.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  file: str
  before: str
  after: str
  tests: tuple[str, ...]


E2E = "tests/test_methods_end_to_end.py"
INDEPENDENCE = "tests/test_independence.py"
HEALTH = "tests/test_health.py"

MUTATIONS = [
    # --- config validation ---------------------------------------------------------------------
    Mutation("model fields not validated", "ensembles/config.py",
             "    validate_model(config.model)\n", "    pass\n",
             ("tests/test_config_fields.py",)),
    Mutation("momentum accepted outside [0, 1)", "ensembles/config.py",
             "0 <= t.momentum < 1", "0 <= t.momentum",
             ("tests/test_config_fields.py", "tests/test_hostile.py::test_any_config_trains_or_fails_with_a_named_field")),
    # --- members: independence of the members' random streams, and the member map ---------------
    Mutation("members share one data-order key", "ensembles/context.py",
             "data_keys.append(jax.random.split(data_key, m))", "data_keys.append(jax.numpy.stack([data_key] * m))",
             (f"{INDEPENDENCE}::test_members_train_on_different_batches_each_epoch",)),
    Mutation("members share one dropout/augmentation key per step", "ensembles/train.py",
             "jax.random.fold_in(state.rng, state.step)", "jax.random.fold_in(jax.random.PRNGKey(0), state.step)",
             (f"{INDEPENDENCE}::test_each_member_and_step_draws_its_own_dropout_mask",
              f"{INDEPENDENCE}::test_each_member_augments_its_batch_differently")),
    Mutation("init gives every member the same rng", "ensembles/train.py",
             "init_key, rng = jax.random.split(member_key)",
             "init_key, rng = jax.random.split(member_key)[0], jax.random.PRNGKey(7)",
             (INDEPENDENCE,)),
    Mutation("data order not reshuffled between epochs", "ensembles/train.py",
             "jax.random.permutation(jax.random.fold_in(k, epoch), n)", "jax.random.permutation(k, n)",
             (f"{INDEPENDENCE}::test_members_train_on_different_batches_each_epoch",)),
    Mutation("loop execution runs member 0 for every member", "ensembles/members.py",
             "fn(*member(stacked, i), *shared) for i in", "fn(*member(stacked, 0), *shared) for i in",
             ("tests/test_members.py::test_member_map_modes_agree",)),
    # --- train ------------------------------------------------------------------------------------
    Mutation("sample weights ignored by the loss", "ensembles/train.py",
             'weights = state.extra["sample_weights"][batch.ids] if "sample_weights" in state.extra else jnp.ones(y.shape)',
             "weights = jnp.ones(y.shape)",
             ("tests/test_train.py::test_sample_weights_scale_the_loss",)),
    # --- trainer and checkpoints: resume ---------------------------------------------------------
    Mutation("resume skips the step after the checkpoint", "ensembles/trainer.py",
             'start = int(meta["step"])\n',
             'start = int(meta["step"]) + 1\n',
             (f"{E2E}::test_resume_mid_run_equals_the_uninterrupted_run",)),
    Mutation("restore tries the oldest checkpoint first", "ensembles/checkpoints.py",
             "for step in sorted(manager.all_steps(), reverse=True):", "for step in sorted(manager.all_steps()):",
             ("tests/test_preemption.py::test_checkpoint_not_matching_its_fingerprint_is_set_aside",)),
    Mutation("collected members loaded without their fingerprint check", "ensembles/checkpoints.py",
             "      tree, meta = _restore_verified(manager, step, abstract)",
             "      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),"
             " meta=ocp.args.JsonRestore()))\n      tree, meta = restored.state, dict(restored.meta)",
             ("tests/test_trainer.py::test_saved_members_are_checked_against_their_fingerprints",)),
    Mutation("fingerprint ignores shapes and dtypes", "ensembles/checkpoints.py",
             '    crc = zlib.crc32(f"{x.shape}{x.dtype}".encode(), crc)\n', "",
             ("tests/test_preemption.py::test_fingerprint_changes_with_any_value",)),
    # --- metrics ----------------------------------------------------------------------------------
    Mutation("ECE as one overall gap instead of per bin", "ensembles/metrics.py",
             "return float(np.sum(np.abs(sum_acc - sum_conf)) / len(labels))",
             "return float(np.abs(np.sum(sum_acc - sum_conf)) / len(labels))",
             ("tests/test_metrics.py",)),
    Mutation("Brier summed over the wrong axis", "ensembles/metrics.py",
             "return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))",
             "return float(np.mean(np.sum((p - onehot) ** 2, axis=0)))",
             ("tests/test_metrics.py",)),
    Mutation("disagreement compares a member with itself", "ensembles/metrics.py",
             "np.mean(preds[i] != preds[j])", "np.mean(preds[i] != preds[i])",
             ("tests/test_metrics.py",)),
    Mutation("AUROC ranks ties without averaging", "ensembles/metrics.py",
             "np.repeat(0.5 * (starts + 1 + ends), ends - starts)", "np.arange(1, len(both) + 1)",
             ("tests/test_ood.py",)),
    # --- evaluation -------------------------------------------------------------------------------
    Mutation("OoD metrics called with in- and out-of-distribution swapped", "ensembles/evaluation.py",
             "metrics_lib.ood_detection(test_probs, member_probs(x), weights)",
             "metrics_lib.ood_detection(member_probs(x), test_probs, weights)",
             ("tests/test_evaluation.py::test_ood_scores_are_oriented_end_to_end",)),
    Mutation("corrupted sets yield the clean images", "ensembles/evaluation.py",
             "      yield name, int(severity), images, y", "      yield name, int(severity), x, y",
             ("tests/test_evaluation.py::test_evaluate_all_with_ood_and_corruptions",)),
    # --- boosting ---------------------------------------------------------------------------------
    Mutation("SAMME down-weights the misclassified", "ensembles/boosting.py",
             "new = w * jnp.exp(shrinkage * alpha * wrong)", "new = w * jnp.exp(-shrinkage * alpha * wrong)",
             ("tests/test_boosting.py",)),
    Mutation("boosting error unweighted", "ensembles/boosting.py",
             "error = jnp.sum(w * wrong) / jnp.sum(w)", "error = jnp.mean(wrong)",
             ("tests/test_boosting.py",)),
    # --- sparse training ----------------------------------------------------------------------------
    Mutation("prune the largest weights", "ensembles/sparse.py",
             "pruned = _select_top(-jnp.abs(w), m, k, max_k)", "pruned = _select_top(jnp.abs(w), m, k, max_k)",
             ("tests/test_sparse.py",)),
    Mutation("momentum not reset after prune-and-grow", "ensembles/sparse.py",
             "return params, SparseState(masks, reset_moments(t.tx.inner, state.inner_state, keep))",
             "return params, SparseState(masks, state.inner_state)",
             (f"{E2E}::test_sparse_methods_flops_by_hand_and_moments_reset",)),
    Mutation("gradients of pruned weights reach the optimizer", "ensembles/sparse.py",
             "grads = apply_masks(updates, state.masks)", "grads = updates",
             (f"{E2E}::test_sparse_methods_flops_by_hand_and_moments_reset",)),
    # --- subnetworks --------------------------------------------------------------------------------
    Mutation("children's weight masks overlap", "ensembles/subnetworks.py",
             "      owner = round_robin(jnp.abs(leaf).ravel(), num_children).reshape(leaf.shape)\n"
             "      masks.append(owner[None] == children.reshape(-1, *([1] * leaf.ndim)))",
             "      owner = round_robin(jnp.abs(leaf).ravel(), num_children).reshape(leaf.shape)\n"
             "      masks.append(owner[None] >= children.reshape(-1, *([1] * leaf.ndim)))",
             ("tests/test_subnetworks.py",)),
    # --- FLOPs --------------------------------------------------------------------------------------
    Mutation("DST training FLOPs ignore ΔT (a gradient update every step)", "ensembles/methods/dst_ensemble.py",
             "gradient_updates = len(sparse_common.update_steps(s, run.total_steps)) if rule == \"rigl\" else 0",
             "gradient_updates = run.total_steps if rule == \"rigl\" else 0",
             (f"{E2E}::test_sparse_methods_flops_by_hand_and_moments_reset",)),
    Mutation("RigL update charged as a full dense training step", "ensembles/flops.py",
             "return batch_size * (3.0 * f_sparse * steps + (f_dense - f_sparse) * gradient_updates)",
             "return batch_size * (3.0 * f_sparse * steps + 3.0 * (f_dense - f_sparse) * gradient_updates)",
             ("tests/test_flops.py",)),
    # --- methods ------------------------------------------------------------------------------------
    Mutation("collected members saved one step before their segment's end", "ensembles/collected.py",
             "return {end: k for k, end in enumerate(segment_ends(total_steps, num_segments))}",
             "return {end - 1: k for k, end in enumerate(segment_ends(total_steps, num_segments))}",
             (f"{E2E}::test_checkpoints_are_taken_exactly_at_segment_ends",)),
    Mutation("segments end one segment early", "ensembles/collected.py",
             "return [int(round((k + 1) * total_steps / num_segments)) for k in range(num_segments)]",
             "return [int(round(k * total_steps / num_segments)) for k in range(num_segments)]",
             ("tests/test_cbnn_snapshot.py::test_segment_ends",
              f"{E2E}::test_checkpoints_are_taken_exactly_at_segment_ends")),
    Mutation("CBNN ignores cbnn.combine", "ensembles/methods/cbnn.py",
             "r.ensemble(members, alphas, c.combine)", "r.ensemble(members, alphas)",
             ("tests/test_cbnn_snapshot.py::test_cbnn_weighted_vote_end_to_end",)),
    Mutation("CBNN averages without the alphas", "ensembles/methods/cbnn.py",
             "r.ensemble(members, alphas, c.combine)", "r.ensemble(members, None, c.combine)",
             ("tests/test_cbnn_snapshot.py::test_cbnn_prediction_is_alpha_weighted_mean",)),
    Mutation("EDST ticket saved after the global exploration", "ensembles/methods/edst_ensemble.py",
             "      tickets.save(state, ends[done], ticket_meta(ends[done], done))\n",
             "      tickets.save(update(state, batch, e.global_drop_fraction, e.exploration_growth == \"gradient\")"
             " if done in starts else state, ends[done], ticket_meta(ends[done], done))\n",
             (f"{E2E}::test_edst_tickets_are_the_states_at_phase_ends_before_exploring",)),
    Mutation("MC dropout passes share one dropout key", "ensembles/train.py",
             "pass_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(num_passes))",
             "pass_keys = jax.vmap(lambda t: key)(jnp.arange(num_passes))",
             ("tests/test_mc_dropout.py",)),
    Mutation("MC dropout pass draws a mask other than training's", "ensembles/train.py",
             "mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape), inputs.shape)",
             "mask = jnp.broadcast_to(jax.random.bernoulli(jax.random.fold_in(rng, 1), p=keep, shape=shape), "
             "inputs.shape)",
             ("tests/test_mc_dropout.py::test_mc_pass_draws_the_mask_training_draws",)),
    # --- targets, pre-flight and several hosts ---------------------------------------------------
    Mutation("a step lowered for the host's platform, not the target's", "ensembles/members.py",
             "      with targets.platform_scope(platform):", "      with targets.platform_scope(None):",
             ("tests/test_preflight.py::test_small_programs_compile_for_a_v5e_4_slice",)),
    Mutation("JAX_PROCESS_ID not read", "ensembles/distributed.py",
             "os.environ.get(ENV[k]) or None", "(os.environ.get(ENV[k]) if k != 'process_id' else None) or None",
             ("tests/test_multihost.py::test_settings_come_from_flags_or_the_environment",)),
    Mutation("every host reads every row of an evaluation batch", "ensembles/train.py",
             "  if not members_lib.is_distributed(mesh):\n    return rows(0, batch_size)",
             "  if True:\n    return rows(0, batch_size)",
             ("tests/test_multihost.py::test_streamed_input_on_two_hosts_each_reading_its_own_rows",)),
    Mutation("a mesh that leaves hosts idle is accepted", "ensembles/context.py",
             "  if len(hosts) > 1 and {d.process_index for d in mesh.devices.flat} != hosts:",
             "  if False:",
             ("tests/test_preflight.py::test_cli_mistakes_are_one_line",)),
    Mutation("ensembles.fit drops a field given by its own name", "ensembles/api.py",
             "      config[owners[0]][key] = value\n", "      pass\n",
             ("tests/test_api.py::test_fields_are_checked_by_name",)),
    # --- health checks ---------------------------------------------------------------------------
    Mutation("the loss-spike test is disabled", "ensembles/health.py",
             "    if len(window) >= options.spike_window // 2:", "    if False:",
             (f"{HEALTH}::test_loss_spike_is_a_jump_above_the_running_median_and_above_chance_loss",
              f"{HEALTH}::test_collapsed_run_is_flagged_and_goes_on_under_warn")),
    Mutation("chance-level accuracy accepted", "ensembles/health.py",
             "  if accuracy <= limit:", "  if accuracy < 0:",
             (f"{HEALTH}::test_chance_accuracy_and_one_class_per_member",
              f"{HEALTH}::test_collapsed_run_is_flagged_and_goes_on_under_warn")),
    Mutation("chance ignores the majority-class rate", "ensembles/health.py",
             "  return max(1.0 / num_classes, float(counts.max()) / max(len(labels), 1))",
             "  return 1.0 / num_classes",
             (f"{HEALTH}::test_chance_is_the_majority_rate_on_long_tailed_labels",)),
    Mutation("a resumed run forgets the spike test's window", "ensembles/trainer.py",
             '      self.window = np.asarray(health_state["loss_window"], np.float64).reshape(-1, run.total_members)\n',
             "      pass\n",
             (f"{HEALTH}::test_stop_ends_the_cli_run_with_one_line_and_keeps_the_last_good_checkpoint",)),
    Mutation("compare averages an unhealthy seed in", "experiments/compare.py",
             "  if unhealthy and any(unhealthy):", "  if False:",
             (f"{HEALTH}::test_compare_marks_an_unhealthy_seed_and_shows_each_seed_instead_of_a_mean",)),
    # --- recipe options (issue 35) -----------------------------------------------------------------
    Mutation("EDST's exploration lr 0 does not follow training.lr", "ensembles/methods/edst_ensemble.py",
             "  exploration_lr = e.exploration_lr or base_lr\n", "  exploration_lr = e.exploration_lr or 0.1\n",
             ("tests/test_edst.py::test_exploration_lr_zero_follows_training_lr",)),
    Mutation("boosting shrinkage ignored", "ensembles/boosting.py",
             "    new = w * jnp.exp(shrinkage * alpha * wrong)", "    new = w * jnp.exp(alpha * wrong)",
             ("tests/test_boosting.py::test_shrinkage_scales_the_exponent_not_alpha",)),
    Mutation("CBNN's segment decay never lowers the lr", "ensembles/methods/cbnn.py",
             "jnp.where(in_segment >= start_decay, c.segment_decay, 1.0)", "1.0",
             ("tests/test_cbnn_snapshot.py::test_segment_decay_lowers_the_lr_before_each_checkpoint",)),
    Mutation("normalized weighted loss divides by B", "ensembles/train.py",
             "      weights = weights * (weights.size / jnp.sum(weights))\n", "      weights = weights\n",
             ("tests/test_train.py::test_normalized_weighted_loss_divides_by_the_batch_weights",)),
    Mutation("training.clip_grad_norm ignored", "ensembles/train.py",
             "  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx", "  return tx",
             (f"{HEALTH}::test_clip_grad_norm_bounds_each_update",)),
    Mutation("EDST's default warm-up gone", "ensembles/methods/edst_ensemble.py",
             "  warmup_epochs: float = number(1.0, ", "  warmup_epochs: float = number(0.0, ",
             ("tests/test_edst.py::test_default_warmup_is_one_epoch_or_training_warmup_if_longer",)),
    Mutation("EDST ignores a longer training.warmup_epochs", "ensembles/methods/edst_ensemble.py",
             "  return max(e.warmup_epochs, training_warmup_epochs)", "  return e.warmup_epochs",
             ("tests/test_edst.py::test_default_warmup_is_one_epoch_or_training_warmup_if_longer",)),
    Mutation("subnetworks partition the input and output layers by default", "ensembles/methods/subnetwork_ensemble.py",
             "  share_input_output: bool = flag(True)", "  share_input_output: bool = flag(False)",
             ("tests/test_subnetwork_ensemble.py::test_children_disjoint_zero_and_different",)),
    Mutation("an ablation row without OoD evaluation enters the OoD table", "experiments/compare.py",
             '  labels = {r["label"] for r in all_results if r.get(key)}', '  labels = {r["label"] for r in all_results}',
             ("tests/test_compare.py::test_comparison_trains_once_and_reports",)),
]
