"""Small layers shared by the models."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensembles import targets


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2, [B, H, W, C] -> [B, H//2, W//2, C].

  Written as reshape + max: on XLA:CPU its backward pass is several times faster than
  `flax.linen.max_pool`'s (reduce_window) and it is identical in value. Odd sizes drop the last
  row/column, as VALID pooling does.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def as_float(x: jax.Array) -> jax.Array:
  """Inputs as floats: float inputs keep their dtype (bfloat16 under mixed precision, see
  `train.in_compute_dtype`), others become float32."""
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=(1, 2))


REMAT = ("none", "blocks", "dots")


def block_maker(cls: type[nn.Module], remat: str) -> Callable[..., nn.Module]:
  """``make(*fields) -> block``: the blocks of a network, numbered ``<cls name>_<k>`` in the order
  they are made (flax's own names, so parameter paths do not depend on ``remat``). ``remat``
  (rematerialisation: `nn.remat`, what the backward pass recomputes instead of keeping):
  ``none``: every activation kept; ``blocks``: only each block's input kept, the block's forward
  pass recomputed (about 1/3 more FLOPs per step); ``dots``: each block's convolution and matmul
  outputs kept, its normalisations and activations recomputed (`jax.checkpoint_policies.dots_saveable`:
  elementwise work only)."""
  if remat not in REMAT:
    raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}.")
  policy = {"blocks": None, "dots": jax.checkpoint_policies.dots_saveable}.get(remat)
  block_cls = cls if remat == "none" else nn.remat(cls, policy=policy)
  count = [0]

  def make(*fields) -> nn.Module:
    count[0] += 1
    return block_cls(*fields, name=f"{cls.__name__}_{count[0] - 1}")

  return make


CONV_IMPLS = ("auto", "xla", "patches")
PADDINGS = ("SAME", "VALID")


def conv_via_patches(x: jax.Array, kernel: jax.Array, strides: tuple[int, int] = (1, 1),
                     padding: str = "SAME") -> jax.Array:
  """2-D convolution as one matmul over patches built from kh·kw shifted slices.

  x [B, H, W, C_in], kernel [kh, kw, C_in, C_out] -> [B, H', W', C_out] with H' = ceil(H/s_h) for
  ``SAME`` padding (TF/XLA: zeros split around the input) and H' = floor((H − kh)/s_h) + 1 for
  ``VALID`` (no padding); equal to `lax.conv_general_dilated(x, kernel, strides, padding)`.
  patches[b, y, x, (i, j, c)] = pad(x)[b, s_h·y + i, s_w·x + j, c]; out = patches @ reshape(kernel).
  On XLA:CPU this is several times faster than the native convolution, and a vmap over ensemble
  members stays a batched matmul instead of becoming a grouped convolution.
  """
  kh, kw, c_in, c_out = kernel.shape
  b, h, w, c = x.shape
  if c != c_in:
    raise ValueError(f"input has {c} channels, kernel expects {c_in}.")
  sh, sw = strides
  if padding == "VALID":
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    if out_h < 1 or out_w < 1:
      raise ValueError(f"A {kh}x{kw} VALID convolution needs inputs of at least that size, got {h}x{w}.")
  else:
    out_h, out_w = -(-h // sh), -(-w // sw)
  pad_h = max((out_h - 1) * sh + kh - h, 0)
  pad_w = max((out_w - 1) * sw + kw - w, 0)
  xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  slices = [xp[:, i: i + (out_h - 1) * sh + 1: sh, j: j + (out_w - 1) * sw + 1: sw, :]
            for i in range(kh) for j in range(kw)]
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  return (patches.reshape(-1, kh * kw * c_in) @ kernel.reshape(kh * kw * c_in, c_out)).reshape(
      b, out_h, out_w, c_out)


class Conv(nn.Module):
  """2-D convolution with SAME or VALID ``padding`` and a selectable implementation (``impl``):

  * ``xla``: `lax.conv_general_dilated` (what `flax.linen.Conv` runs);
  * ``patches``: `conv_via_patches`, one matmul over an explicit patch tensor;
  * ``auto``: on CPU (the platform compiled for: `targets.current_platform`), ``patches`` for layers with at most ``PATCHES_MAX_IN_CHANNELS`` input
    channels (image inputs: the patch tensor is small) and for strided layers, where it beat XLA's
    convolution forward + backward in `benchmarks/conv_layers.py`; ``xla`` everywhere else.
  Parameters are named and shaped as flax's Conv (``kernel`` [kh, kw, C_in, C_out], ``bias``
  [C_out]) and the class is named ``Conv`` so parameter paths (``Conv_0/kernel``) are the same as
  with `flax.linen.Conv`: checkpoints, masks and FLOPs counts do not depend on the implementation.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding not in PADDINGS:
      raise ValueError(f"model.padding must be one of {PADDINGS}, got {self.padding!r}.")
    kh, kw = self.kernel_size
    c_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features), jnp.float32)
    if resolve_conv_impl(self.impl, c_in, max(self.strides)) == "patches":
      y = conv_via_patches(x, kernel, tuple(self.strides), self.padding)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), self.padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y


PATCHES_MAX_IN_CHANNELS = 4


def resolve_conv_impl(impl: str, in_channels: int, stride: int = 1, backend: str | None = None) -> str:
  """'xla' or 'patches' for a layer with ``in_channels`` inputs and ``stride`` (see `Conv`)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")
  if impl != "auto":
    return impl
  on_cpu = (backend or targets.current_platform()) == "cpu"
  return "patches" if (on_cpu and (in_channels <= PATCHES_MAX_IN_CHANNELS or stride > 1)) else "xla"
