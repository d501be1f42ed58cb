"""One convolution layer, forward + backward (gradients for input and kernel), XLA's convolution
against the patches implementation, on the layer shapes of the models we ship.

  python -m benchmarks.conv_layers [--flags "--xla_cpu_use_thunk_runtime=false"]

Times are the best of several repeats (robust to a noisy machine). Used to choose
`ensembles.models.layers.resolve_conv_impl`'s rule for ``auto``.
"""
from __future__ import annotations

import argparse
import os
import time

ARGS = argparse.ArgumentParser().parse_args() if __name__ == "__main__" else None

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ensembles.models.layers import conv_via_patches  # noqa: E402

# (name, input [B, H, W, C], kernel [kh, kw, C, O], stride)
LAYERS = [
    ("lenet conv1", (128, 28, 28, 1), (5, 5, 1, 32), 1),
    ("lenet conv2", (128, 14, 14, 32), (5, 5, 32, 64), 1),
    ("resnet stem", (128, 32, 32, 3), (3, 3, 3, 16), 1),
    ("resnet stage1", (128, 32, 32, 16), (3, 3, 16, 16), 1),
    ("resnet stage2", (128, 16, 16, 32), (3, 3, 32, 32), 1),
    ("resnet stage3", (128, 8, 8, 64), (3, 3, 64, 64), 1),
    ("wrn16-4 stage1", (128, 32, 32, 64), (3, 3, 64, 64), 1),
    ("wrn16-4 stage2", (128, 16, 16, 128), (3, 3, 128, 128), 1),
    ("wrn16-4 stage3", (128, 8, 8, 256), (3, 3, 256, 256), 1),
    ("strided 16->32", (128, 32, 32, 16), (3, 3, 16, 32), 2),
]


def best_time(fn, *args, repeats=7):
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def xla_conv(x, k, stride):
  return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main():
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print("| layer | input | kernel | xla fwd+bwd (ms) | patches fwd+bwd (ms) | patches / xla |")
  print("|---|---|---|---|---|---|")
  for name, xs, ks, stride in LAYERS:
    x = jax.random.normal(jax.random.PRNGKey(0), xs)
    k = jax.random.normal(jax.random.PRNGKey(1), ks) * 0.05
    times = {}
    for impl, conv in (("xla", xla_conv), ("patches", lambda x, k, s: conv_via_patches(x, k, (s, s)))):
      grad = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k, stride) ** 2), argnums=(0, 1)))
      times[impl] = best_time(grad, x, k)
    print(f"| {name} | {xs} | {ks} s{stride} | {1e3 * times['xla']:.1f} | {1e3 * times['patches']:.1f} | "
          f"{times['patches'] / times['xla']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
