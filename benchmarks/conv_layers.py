"""One convolution layer, forward + backward (gradients for input and kernel), XLA's convolution
against the patches implementation, on the layer shapes of the models we ship.

  python -m benchmarks.conv_layers              # XLA vs patches, forward + backward
  python -m benchmarks.conv_layers --directions # XLA's convolution per direction, GFLOP/s

(XLA flags go in the XLA_FLAGS environment variable.) Times are the best of several repeats
(robust to a noisy machine). Used to choose `ensembles.models.layers.resolve_conv_impl`'s rule for
``auto``. ``--directions`` times XLA's forward convolution, the gradient for the input and the
gradient for the kernel of each layer (each the same multiply-adds: 2·B·H'·W'·kh·kw·C·O FLOPs)
and reports their GFLOP/s, including the classic LeNet-5 (Caffe) layers.
"""
from __future__ import annotations

import argparse
import os
import time

_PARSER = argparse.ArgumentParser()
_PARSER.add_argument("--directions", action="store_true", help="XLA's conv per direction, with GFLOP/s")
ARGS = _PARSER.parse_args() if __name__ == "__main__" else None

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


CAFFE_LAYERS = [
    ("lenet5_caffe conv1", (128, 28, 28, 1), (5, 5, 1, 20), 1),
    ("lenet5_caffe conv2", (128, 12, 12, 20), (5, 5, 20, 50), 1),
]


def directions():
  """Forward, input-gradient and kernel-gradient time of XLA's convolution per layer, in GFLOP/s."""
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print("| layer | input | kernel | forward (ms, GFLOP/s) | input gradient (ms, GFLOP/s) | kernel gradient (ms, GFLOP/s) |")
  print("|---|---|---|---|---|---|")
  for name, xs, ks, stride in CAFFE_LAYERS + LAYERS:
    padding = "VALID" if name.startswith("lenet5_caffe") else "SAME"
    conv = lambda x, k, stride=stride, padding=padding: jax.lax.conv_general_dilated(
        x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.random.normal(jax.random.PRNGKey(0), xs)
    k = jax.random.normal(jax.random.PRNGKey(1), ks) * 0.05
    out = jax.eval_shape(conv, x, k).shape
    flops = 2.0 * out[0] * out[1] * out[2] * ks[0] * ks[1] * ks[2] * ks[3]
    loss = lambda x, k: jnp.sum(conv(x, k) ** 2)
    cells = []
    for fn in (jax.jit(conv), jax.jit(jax.grad(loss, argnums=0)), jax.jit(jax.grad(loss, argnums=1))):
      t = best_time(fn, x, k)
      cells.append(f"{1e3 * t:.1f}, {flops / t / 1e9:.0f}")
    print(f"| {name} | {xs} | {ks} s{stride} | " + " | ".join(cells) + " |", flush=True)


def main():
  if ARGS is not None and ARGS.directions:
    directions()
    return
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
