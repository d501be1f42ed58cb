"""Model registry: models are found by name from the config (`build_model`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn

from ensembles.models.efficientnet import EfficientNetB0
from ensembles.models.imagenet_resnet import ImageNetResNet
from ensembles.models.lenet import LeNet, LeNet5, LeNet5Caffe
from ensembles.models.mlp import MLP, LeNet300100
from ensembles.models.resnet import ResNet
from ensembles.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "lenet5_caffe": LeNet5Caffe,   # conv 20/50 VALID, fc 800-500
    "lenet5": LeNet5,              # conv 6/16 VALID, fc 256-120-84
    "lenet_300_100": LeNet300100,  # MLP 784-300-100
    "resnet": ResNet,
    "wide_resnet": WideResNet,
    "imagenet_resnet": ImageNetResNet,  # ResNet-18/34/50/101/152, ImageNet or 64x64 stem
    "efficientnet_b0": EfficientNetB0,
}


def model_fields(name: str) -> dict[str, Any]:
  """The fields a config's ``model`` block may set for model ``name``, with their defaults."""
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}.")
  skip = {"num_classes", "parent", "name"}
  return {f.name: f.default for f in dataclasses.fields(MODELS[name])
          if f.name not in skip and f.default is not dataclasses.MISSING}


def build_model(name: str, num_classes: int, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
  """Instantiates the model called ``name`` with ``kwargs`` (the config's ``model`` fields)."""
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}.")
  cls = MODELS[name]
  allowed = {f.name for f in dataclasses.fields(cls)} - {"num_classes", "parent", "name"}
  kwargs = dict(kwargs or {})
  unknown = sorted(set(kwargs) - allowed)
  if unknown:
    raise ValueError(f"Unknown field(s) {unknown} for model {name!r}; allowed: {sorted(allowed)}.")
  rate = kwargs.get("dropout_rate", 0.0)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"model.dropout_rate must be in [0, 1), got {rate}.")
  return cls(num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "build_model", "model_fields", "EfficientNetB0", "ImageNetResNet", "MLP", "LeNet", "LeNet5", "LeNet5Caffe", "LeNet300100", "ResNet",
           "WideResNet"]
