"""ensembles: efficient deep ensembles in JAX.

Every per-member quantity is a pytree with a leading member axis [M, ...]; methods are pure
per-member functions lifted to all members with `ensembles.members.member_map` and jitted.
"""
__version__ = "0.1.0"
