"""Fashion-MNIST as a tfds dataset of ArrayRecord files (`fashion_mnist_records`), written without
TensorFlow by `experiments/prepare_records.py`: raw uint8 tensors [28, 28, 1] (tfds' Image feature
needs TensorFlow to encode) and class labels, the same examples in the same order as
`data.load_fashion_mnist_idx`, so a streamed run on them equals the in-memory run. Importing this
module imports tensorflow-datasets (about a second): only the preparation script does.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ensembles import data as data_lib


class FashionMnistRecords(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from its IDX files (``idx_dir``, default Debian's folder)."""

  VERSION = tfds.core.Version("1.0.0")
  idx_dir = data_lib.FASHION_MNIST_DIR

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=10)}), supervised_keys=("image", "label"),
        disable_shuffling=True)  # records in the IDX order

  def _split_generators(self, dl_manager):
    del dl_manager
    arrays = data_lib.load_fashion_mnist_idx(self.idx_dir)
    return {"train": self._generate_examples(arrays["x_train"], arrays["y_train"]),
            "test": self._generate_examples(arrays["x_test"], arrays["y_test"])}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def prepare(data_dir: str, idx_dir: str = "") -> str:
  """Writes the dataset into ``data_dir`` (nothing if it is already there); returns its folder."""
  builder = FashionMnistRecords(data_dir=data_dir, file_format="array_record")
  if idx_dir:
    builder.idx_dir = idx_dir
  builder.download_and_prepare()
  return str(builder.data_dir)
