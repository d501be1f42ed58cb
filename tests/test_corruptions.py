"""Generated corruptions: shape, dtype and range kept; stronger with severity; deterministic."""
import numpy as np
import pytest

from ensembles import corruptions


def _images(n=12, size=28, channels=1, seed=0):
  """Structured images: a bright blob with sharp edges and some texture on a dark background."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  out = np.zeros((n, size, size, channels))
  for i in range(n):
    cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(4, 8)]
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2) * rng.uniform(120, 220)
    stripes = 30 * (np.sin(xx / rng.uniform(1, 3)) > 0)
    out[i] = (blob + stripes)[..., None] * rng.uniform(0.7, 1.0, channels)
  return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_corruption_keeps_shape_and_range_and_grows_with_severity(name):
  images = _images()
  distances = []
  for severity in corruptions.SEVERITIES:
    out = corruptions.corrupt(images, name, severity)
    assert out.shape == images.shape and out.dtype == np.uint8  # uint8 is the [0, 255] range
    distances.append(np.abs(out.astype(float) - images).mean())
  assert distances[0] > 0, f"{name} at severity 1 changed nothing"
  assert all(a < b for a, b in zip(distances, distances[1:])), f"{name}: {np.round(distances, 3)}"


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_corruption_on_colour_images_is_deterministic(name):
  images = _images(n=3, size=32, channels=3)
  first = corruptions.corrupt(images, name, 3, seed=7)
  assert first.shape == images.shape and first.dtype == np.uint8
  np.testing.assert_array_equal(first, corruptions.corrupt(images, name, 3, seed=7))


def test_bad_arguments_are_named():
  images = _images(n=2)
  with pytest.raises(ValueError, match="Unknown corruption 'fog'; allowed"):
    corruptions.corrupt(images, "fog", 1)
  with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\), got 6"):
    corruptions.corrupt(images, "contrast", 6)
  with pytest.raises(ValueError, match=r"uint8 \[N, H, W, C\]"):
    corruptions.corrupt(images[0], "contrast", 1)
