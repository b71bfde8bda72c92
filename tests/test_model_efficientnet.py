"""EfficientNet (pca_jax.models.efficientnet) against torchvision's efficientnet_b0: same logits
from the same weights (width 64, width 32 = width_mult 0.5, the "small" stem), exports that
torchvision loads strictly, torchvision's block table / stochastic-depth rates / BatchNorm
settings / dropout for B0 .. B7, stochastic depth and dropout in train mode only, train-mode
BatchNorm with weight-0 filler images, and refusal of other families' state_dicts.
Helpers: tests/test_model_mobilenet.py.
"""

from __future__ import annotations

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
  pytest.importorskip("torch")  # CI installs requirements-bench.txt, so these run there
import torch

from pca_jax.models.efficientnet import (VARIANTS, EfficientNet, check_image_size,
                                         efficientnet_b0, efficientnet_layout,
                                         stochastic_depth_row, torch_mapping)
from pca_jax.models.torch_weights import _torch_shape, torchvision_to_flax
from tests.test_model_mobilenet import (_compare, _randomise, _small_stem, _train,
                                        check_16px_small_stem, check_export, check_init,
                                        check_train_mode, tv)

_tv_efficientnet = importlib.import_module("torchvision.models.efficientnet")



def _torch_efficientnet(width: int, stem: str = "imagenet") -> torch.nn.Module:
  """torchvision's EfficientNet-B0 with width_mult = width / 64, built as its efficientnet_b0
  builds it (which fixes width_mult 1), 10 classes (random init: torch.manual_seed first)."""
  setting, last = _tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=width / 64,
                                                      depth_mult=1.0)
  net = _tv_efficientnet.EfficientNet(setting, 0.2, num_classes=10, last_channel=last)
  return _small_stem(net) if stem == "small" else net


def _check_torch_settings(net: torch.nn.Module, model: EfficientNet):
  """The model's per-block stochastic-depth rates, BatchNorm eps / momentum and classifier
  dropout are torchvision's (exactly)."""
  v = VARIANTS[model.variant]
  _, blocks, _ = efficientnet_layout(model.variant, model.width, model.stochastic_depth)
  assert [b.stochastic_depth for b in blocks] == \
      [m.stochastic_depth.p for m in net.modules() if isinstance(m, _tv_efficientnet.MBConv)]
  norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert {(m.eps, m.momentum) for m in norms} == {(v.bn_eps, v.bn_momentum)}
  assert net.classifier[0].p == v.dropout


def test_logits_match_torchvision():
  torch.manual_seed(0)
  net = _randomise(tv.models.efficientnet_b0(num_classes=10), 64)
  _check_torch_settings(net, efficientnet_b0(10))
  # seen: max difference 2.5e-5 at max |logit| 3.1
  _compare(net, efficientnet_b0(10), 64)


def test_width_32_and_small_stem_match_torchvision_width_mult_half():
  # width 32 = torchvision width_mult 0.5: stem 16, stage channels 8 8 16 24 40 56 96 (the
  # first stage 16 -> 8 channels: no expand conv, and a residual); small stem = stride-1 first
  # conv, on 32 px images
  torch.manual_seed(1)
  net = _randomise(_torch_efficientnet(32, "small"), 32, seed=1)
  # seen: max difference 1.1e-4 at max |logit| 7.5 (float64: see _compare)
  _compare(net, efficientnet_b0(10, width=32, stem="small"), 32, seed=1)


def test_export_loads_into_torchvision_strictly():
  check_export(efficientnet_b0(10, width=32, stem="small"), _torch_efficientnet(32, "small"), 32)


@pytest.mark.long
def test_init_distributions_match_torchvision():
  def dense_init(ref, value):  # U(-1 / sqrt(out_features), 1 / sqrt(out_features))
    bound = 1 / 10 ** 0.5
    assert value.abs().max().item() <= bound and value.abs().max().item() > 0.95 * bound
    assert abs(value.std().item() / ref.std().item() - 1) < 0.1
  torch.manual_seed(0)
  check_init(efficientnet_b0(10, width=32), _torch_efficientnet(32), dense_init)


def test_train_mode_filler_images_and_stochastic_depth():
  # with stochastic depth 0.2 and dropout 0.2 on (check_train_mode: the same masks for the real
  # images with and without the filler)
  model = efficientnet_b0(10, width=16, stem="small")
  variables = check_train_mode(model)
  x = np.random.default_rng(3).normal(size=(5, 32, 32, 3)).astype(np.float32)
  weights = jnp.array([1.0, 1, 1, 0, 0])
  a, _ = _train(model, variables, x, weights, jax.random.key(1))
  b, _ = _train(model, variables, x, weights, jax.random.key(2))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3  # the dropout key matters in train


class _Drop(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    return stochastic_depth_row(self, x, self.rate, train)


def test_stochastic_depth_is_torchvisions_row_mode():
  x = jnp.ones((4000, 2, 2, 3))
  y = np.asarray(_Drop(0.25).apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
  rows = y.reshape(4000, -1)
  # whole examples dropped, the others scaled by 1 / (1 - rate)
  assert set(np.unique(rows)) == {0.0, np.float32(1 / 0.75)}
  assert np.all(rows.min(axis=1) == rows.max(axis=1))
  assert abs((rows[:, 0] == 0).mean() - 0.25) < 0.03
  # eval mode and rate 0: identities that need no rng
  np.testing.assert_array_equal(_Drop(0.25).apply({}, x, False), x)
  np.testing.assert_array_equal(_Drop(0.0).apply({}, x, True), x)


def test_layout_and_small_pieces():
  model = efficientnet_b0(5, width=16, stem="small")
  check_16px_small_stem(model)
  assert check_image_size(model, 1) is None and check_image_size(model, 224) is None
  assert "at least 1 x 1 px" in check_image_size(model, 0)
  stem, blocks, last = efficientnet_layout("b0", 64)
  assert (stem, len(blocks), last) == (32, 16, 1280)
  assert blocks[-1].stochastic_depth == 0.2 * 15 / 16 and blocks[0].stochastic_depth == 0.0
  with pytest.raises(ValueError, match="unknown stem 'tiny'; use 'imagenet' or 'small'"):
    efficientnet_b0(10, stem="tiny")
  with pytest.raises(ValueError, match="unknown stem 'tiny'; use 'imagenet' or 'small'"):
    EfficientNet(stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  with pytest.raises(ValueError, match=r"unknown EfficientNet variant 'b9'; choose one of"):
    EfficientNet(variant="b9").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  hash(EfficientNet())  # the module is an lru_cache key


@pytest.mark.long
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_table_matches_torchvision(variant):
  """B0 .. B7 (only B0 is registered): every torchvision key maps to a flax variable of the
  matching shape, and stochastic depth, BatchNorm and dropout settings are torchvision's."""
  net = getattr(tv.models, f"efficientnet_{variant}")
  with torch.device("meta"):
    net = net(num_classes=10)
  model = EfficientNet(num_classes=10, variant=variant)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  shapes = {key: tuple(v.shape) for key, v in net.state_dict().items()
            if not key.endswith("num_batches_tracked")}
  mapped = {}
  for key, collection, path, kind in torch_mapping(model, target):
    leaf = target[collection]
    for name in path:
      leaf = leaf[name]
    mapped[key] = _torch_shape(tuple(leaf.shape), kind)
  assert mapped == shapes
  _check_torch_settings(net, model)


def test_other_families_are_refused():
  r18 = tv.models.resnet18(num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"^state_dict has no key features\.0\.0\.weight: the file "
                     r"is a torchvision resnet18 \(2, 2, 2, 2\) basic, the model is "
                     r"efficientnet_b0 width 64 stem 'imagenet'$"):
    torchvision_to_flax(r18, efficientnet_b0(10))
  with torch.device("meta"):
    mobilenet = tv.models.mobilenet_v2(num_classes=10).state_dict()
    b1 = tv.models.efficientnet_b1(num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"no key features\.1\.0\.block\.0\.0\.weight: the file is "
                     r"a torchvision mobilenet_v2 \(17 inverted-residual blocks\), the model is "
                     r"efficientnet_b0 width 64"):
    torchvision_to_flax(mobilenet, efficientnet_b0(10))
  with pytest.raises(ValueError, match=r"keys the model does not use \(features\.1\.1\.block.*"
                     r"the file is a torchvision efficientnet_b1/efficientnet_b2 \(blocks per "
                     r"stage \(2, 3, 3, 4, 4, 5, 2\)\), the model is efficientnet_b0"):
    torchvision_to_flax(b1, efficientnet_b0(10))
