"""MobileNetV2 (pca_jax.models.mobilenet) against torchvision's mobilenet_v2: same logits from the
same weights (width 64, width 32 = width_mult 0.5, the "small" stem), exports that torchvision
loads strictly, train-mode BatchNorm with weight-0 filler images, the small stem on 16 px images,
refusal of other families' state_dicts, and (long tier: compiling model.init alone takes ~7 s)
torchvision's initialisation distributions.

tests/test_model_efficientnet.py uses the helpers here for EfficientNet. The jitted programs are
cached by (model, shapes), so each file compiles 4 programs (2 eval, 2 train): most of its time.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
  pytest.importorskip("torch")  # CI installs requirements-bench.txt, so these run there
import torch

from pca_jax.models.mobilenet import (MobileNetV2, check_image_size, make_divisible,
                                      mobilenet_v2)
from pca_jax.models.torch_weights import flax_to_torchvision, torchvision_to_flax
from tests.helpers import import_torchvision

tv = import_torchvision()




def _randomise(net: torch.nn.Module, size: int, seed: int = 0) -> torch.nn.Module:
  """net in eval mode with random BatchNorm scale / bias / running statistics, random classifier
  and conv biases (torchvision zero-initialises them, and a 0.01-std classifier gives logits
  near 0), so that every mapped tensor matters to the logits.

  The running statistics are those of one train-mode pass over 8 random size x size images,
  then moved a little at random (mean by N(0, 0.05) std, var scaled by U(0.9, 1.1)): statistics
  drawn without regard to the activations make EfficientNet's logits nearly the same for every
  input, and larger moves compound over the blocks into logits in the hundreds.
  """
  gen = torch.Generator().manual_seed(seed)
  norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features ** 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
      elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    momentum = [m.momentum for m in norms]
    for m in norms:
      m.momentum = 1.0  # running statistics = this batch's
    net.train()(torch.randn((8, 3, size, size), generator=gen))
    for m, value in zip(norms, momentum):
      m.momentum = value
      std = m.running_var.sqrt()
      m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.05 * std)
      m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.2 + 0.9)
  return net.eval()


@functools.partial(jax.jit, static_argnums=0)
def _eval(model, variables, x):
  return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _train(model, variables, x, weights, key):
  return model.apply(variables, x, train=True, weights=weights, mutable=["batch_stats"],
                     rngs={"dropout": key})


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(model, size: int):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)


def _compare(net: torch.nn.Module, model, size: int, seed: int = 0) -> tuple[float, float]:
  """(max |flax - torch|, max |torch logit|) of the eval logits on 2 random size x size images,
  after loading the torch model's state_dict into `model`; asserts they agree to 1e-4 (absolute
  and relative), the logits are O(1) and differ between the two images.

  The difference is float32 rounding, amplified through the blocks: against torch in float64,
  EfficientNet-B0 at width 32 (logits up to 7.5) is off by 1.3e-4 in flax and 4e-5 in torch,
  and both errors grow alike stage by stage (relative 2e-7 after the stem, 1e-5 at the end;
  sigmoid / rsqrt written out changed nothing).
  """
  variables = torchvision_to_flax(net.state_dict(), model)
  x = np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = np.asarray(_eval(model, variables, x.transpose(0, 2, 3, 1)))
  assert out.shape == ref.shape and out.dtype == np.float32
  scale = float(np.abs(ref).max())
  assert 0.5 < scale < 100  # the random statistics neither vanish nor explode
  assert np.abs(ref[0] - ref[1]).max() > 0.1 * scale  # the logits depend on the image
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
  return float(np.abs(out - ref).max()), scale


def _small_stem(net: torch.nn.Module) -> torch.nn.Module:
  """torchvision's model with the "small" stem: the first conv's stride 2 -> 1."""
  net.features[0][0].stride = (1, 1)
  return net


def _torch_mobilenet_v2(width: int, stem: str = "imagenet", seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  net = tv.models.mobilenet_v2(num_classes=10, width_mult=width / 64)
  return _randomise(_small_stem(net) if stem == "small" else net, 64 if stem == "imagenet" else 32,
                    seed)


def test_logits_match_torchvision():
  # seen: max difference 2.0e-5 at max |logit| 1.8
  _compare(_torch_mobilenet_v2(64), mobilenet_v2(10), 64)


def test_width_32_and_small_stem_match_torchvision_width_mult_half():
  # width 32 = torchvision width_mult 0.5 (stem 16, last conv still 1280); small stem = stride 1
  # first conv, on 32 px images
  model = mobilenet_v2(10, width=32, stem="small")
  # seen: max difference 2.1e-5 at max |logit| 1.9
  _compare(_torch_mobilenet_v2(32, "small", seed=1), model, 32, seed=1)


def random_variables(model, size: int, seed: int = 0) -> dict:
  """Random variables with the structure of model.init (numpy, no compilation): kernels
  N(0, 1 / fan_in), BatchNorm scale U(0.5, 1.5) and var U(0.5, 2), biases and means N(0, 0.2);
  every tensor differs from torchvision's init values."""
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1]))
    if name == "scale":
      return rng.uniform(0.5, 1.5, x.shape)
    if name == "var":
      return rng.uniform(0.5, 2.0, x.shape)
    return rng.normal(size=x.shape) * 0.2
  return jax.tree_util.tree_map_with_path(lambda p, x: leaf(p, x).astype(np.float32), target)


def check_export(model, net: torch.nn.Module, size: int):
  """Random flax variables exported with flax_to_torchvision load strictly into `net` (a
  torchvision model of the same layout) and give flax's eval logits (1e-4)."""
  variables = random_variables(model, size)
  net.load_state_dict(flax_to_torchvision(variables, model), strict=True)
  x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  out = np.asarray(_eval(model, variables, x))
  assert 0.5 < np.abs(ref).max() < 100
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_export_loads_into_torchvision_strictly():
  net = _small_stem(tv.models.mobilenet_v2(num_classes=10, width_mult=0.5))
  check_export(mobilenet_v2(10, width=32, stem="small"), net, 32)


def check_init(model, net: torch.nn.Module, dense_init):
  """flax's init against torchvision's: every conv kernel of >= 2000 weights N(0, 2 / fan_out)
  (kaiming_normal_(mode="fan_out"); mean and std within 10 %), BatchNorm scale 1 / bias 0,
  biases 0; dense_init(torch weight, flax kernel as a torch [out, in] tensor) checks the
  classifier's distribution. Compiling model.init costs ~7 s of CPU (one RNG kernel per tensor)."""
  variables = _init(model, 16)
  sd, torch_sd = flax_to_torchvision(variables, model), net.state_dict()
  assert set(sd) == set(torch_sd)
  for key, value in sd.items():
    ref = torch_sd[key]
    assert value.shape == ref.shape, key
    if value.ndim <= 1:  # BatchNorm, biases, num_batches_tracked: constants on both sides
      np.testing.assert_array_equal(value.numpy(), ref.numpy(), err_msg=key)
    elif key.startswith("classifier"):
      dense_init(ref, value)
    elif ref.numel() >= 2000:
      std = (2 / (ref.shape[0] * ref.shape[2] * ref.shape[3])) ** 0.5
      assert abs(value.std().item() / std - 1) < 0.1, key
      assert abs(value.mean().item()) < 0.1 * std, key


@pytest.mark.long
def test_init_distributions_match_torchvision():
  def dense_init(ref, value):  # nn.init.normal_(weight, 0, 0.01)
    assert abs(value.std().item() - 0.01) < 0.001 and abs(ref.std().item() - 0.01) < 0.001
    assert abs(value.mean().item()) < 0.001
  torch.manual_seed(0)
  net = tv.models.mobilenet_v2(num_classes=10, width_mult=0.5)
  check_init(mobilenet_v2(10, width=32), net, dense_init)


def check_train_mode(model, num_classes: int = 10):
  """Train mode (one apply with mutable batch_stats and a dropout key) on 32 x 32 images:
  [B, classes] float32 logits, every BatchNorm's batch_stats updated; 3 real + 2 weight-0 filler
  images give the batch_stats of the 3 real images alone (1e-4; seen ~1e-5 for MobileNetV2 and
  EfficientNet-B0 at width 16 with the small stem: float32 rounding of the weighted vs plain sums,
  amplified through the BatchNorms. At 16 x 16 the last stages are 1 x 1, each BatchNorm
  normalises 3 numbers and the rounding grows to ~1e-3: hence 32 px), and the same logits for
  the real images. The dropout / stochastic-depth masks of the real images are the same with and
  without the filler: jax's partitionable threefry (the default since jax 0.5) gives element i
  of a random array the same bits whatever the array's length."""
  real = np.random.default_rng(3).normal(size=(3, 32, 32, 3)).astype(np.float32)
  filler = np.random.default_rng(4).normal(5.0, 3.0, size=(2, 32, 32, 3)).astype(np.float32)
  variables = random_variables(model, 32)
  key = jax.random.key(7)
  logits, new = _train(model, variables, np.concatenate([real, filler]),
                       jnp.array([1.0, 1, 1, 0, 0]), key)
  assert logits.shape == (5, num_classes) and logits.dtype == jnp.float32
  before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(new["batch_stats"])
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  logits_alone, alone = _train(model, variables, real, None, key)
  for a, b in zip(jax.tree.leaves(alone["batch_stats"]), after):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  scale = np.abs(logits_alone).max()
  np.testing.assert_allclose(logits[:3], logits_alone, atol=1e-4 * scale, rtol=1e-4)
  return variables


def check_16px_small_stem(model, num_classes: int = 5):
  """The small stem on 16 x 16 images: [B, classes] float32 logits in eval and train mode, and
  bfloat16 compute keeps float32 parameters (traced with jax.eval_shape: shapes and dtypes
  only, nothing compiled)."""
  x = jnp.zeros((2, 16, 16, 3))
  bf16 = model.clone(dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(lambda: bf16.init_with_output(jax.random.key(0), x,
                                                                train=False))
  assert out.shape == (2, num_classes) and out.dtype == jnp.float32
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                rngs={"dropout": jax.random.key(1)}), variables)
  assert out.shape == (2, num_classes) and out.dtype == jnp.float32


def test_train_mode_and_filler_images():
  check_train_mode(mobilenet_v2(10, width=16, stem="small"))


def test_layout_and_small_pieces():
  assert [make_divisible(v) for v in (4, 12, 16 * 0.75, 37, 1280 * 1.0)] == [8, 16, 16, 40, 1280]
  model = mobilenet_v2(5, width=16, stem="small")
  check_16px_small_stem(model)
  assert check_image_size(model, 1) is None and check_image_size(model, 224) is None
  assert "at least 1 x 1 px" in check_image_size(model, 0)
  with pytest.raises(ValueError, match="unknown stem 'tiny'; use 'imagenet' or 'small'"):
    mobilenet_v2(10, stem="tiny")
  with pytest.raises(ValueError, match="unknown stem 'tiny'; use 'imagenet' or 'small'"):
    MobileNetV2(stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  hash(MobileNetV2())  # the module is an lru_cache key


def test_other_families_are_refused():
  r18 = tv.models.resnet18(num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"^state_dict has no key features\.0\.0\.weight: the file "
                     r"is a torchvision resnet18 \(2, 2, 2, 2\) basic, the model is mobilenet_v2 "
                     r"width 64 stem 'imagenet'$"):
    torchvision_to_flax(r18, mobilenet_v2(10))
  with torch.device("meta"):
    effnet = tv.models.efficientnet_b0(num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"no key features\.1\.conv\.0\.0\.weight: the file is a "
                     r"torchvision efficientnet_b0 .*the model is mobilenet_v2 width 64"):
    torchvision_to_flax(effnet, mobilenet_v2(10))
