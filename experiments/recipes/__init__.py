"""The papers' headline experiments as configs, one file per experiment (README "Running at scale").

Each module's docstring states the paper's table and setting, what is the paper's and what is
ours, the command, and an ESTIMATE of its cost on a named accelerator worked out on paper by
`experiments/estimate.py` (tests/test_recipes.py recomputes every estimate from the config).
Shared blocks live in `_common.py`.
"""
