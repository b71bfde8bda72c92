"""ShuffleNetV2 x1.0 (pca_jax.models.shufflenet) against torchvision's ShuffleNetV2.

torchvision's model with random weights and random BatchNorm statistics loads into the Flax model
(torch_weights.torchvision_to_flax) and gives the same eval logits, at width 64 (torchvision's
shufflenet_v2_x1_0) and width 32 (torchvision's ShuffleNetV2 class with stage_channels(32)); the
export (flax_to_torchvision) loads back strictly; train mode updates batch_stats and ignores
weight-0 filler images; the small stem runs on 16 px; other families' state_dicts are refused.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
  pytest.importorskip("torch")
import torch

from pca_jax.models import shufflenet
from pca_jax.models.torch_weights import flax_to_torchvision, torchvision_to_flax
from tests.helpers import import_torchvision

NUM_CLASSES = 10


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
  """Random BatchNorm scale / bias / running stats (so the BN mapping is really tested), fc weights
  x 30 (logits ~ 1-10 rather than ~ 0.2, so 1e-4 is a tight bound); eval mode."""
  with torch.no_grad():
    net.fc.weight.mul_(30.0)
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


def _torch_net(width: int, seed: int = 0) -> torch.nn.Module:
  tv = import_torchvision()
  torch.manual_seed(seed)
  if width == 64:
    net = tv.models.shufflenet_v2_x1_0(num_classes=NUM_CLASSES)
  else:
    net = tv.models.shufflenetv2.ShuffleNetV2([4, 8, 4], list(shufflenet.stage_channels(width)),
                                              num_classes=NUM_CLASSES)
  return _randomise(net)


def _eval(model, variables, x_nchw: np.ndarray) -> np.ndarray:
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


def _parity(width: int):
  net = _torch_net(width)
  model = shufflenet.shufflenet_v2_x1_0(NUM_CLASSES, width=width)
  variables = torchvision_to_flax(net.state_dict(), model)
  x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = _eval(model, variables, x)
  assert out.shape == ref.shape == (2, NUM_CLASSES) and out.dtype == np.float32
  assert 1 < np.abs(ref).max() < 100  # the random BN statistics neither vanish nor explode
  # float32 on both sides, other summation orders: seen max |flax - torch| 2.9e-6 (width 64) and
  # 3.0e-6 (width 32) at max |logit| ~7
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
  return net, model, variables, x, out


def test_stage_channels():
  assert shufflenet.stage_channels(64) == (24, 116, 232, 464, 1024)
  assert shufflenet.stage_channels(32) == (12, 58, 116, 232, 512)
  assert shufflenet.stage_channels(16) == (6, 30, 58, 116, 256)
  assert shufflenet.stage_channels(1) == (2, 2, 4, 8, 16)
  for w in range(1, 200):
    assert all(c % 2 == 0 and c >= 2 for c in shufflenet.stage_channels(w))


def test_channel_shuffle_matches_torch():
  tv = import_torchvision()
  x = np.arange(2 * 6 * 3 * 2, dtype=np.float32).reshape(2, 6, 3, 2)  # NCHW, C = 6
  ref = tv.models.shufflenetv2.channel_shuffle(torch.from_numpy(x), 2).numpy()
  out = np.asarray(shufflenet.channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 2))
  np.testing.assert_array_equal(out.transpose(0, 3, 1, 2), ref)


def test_width64_logits_and_round_trip_match_torchvision():
  net, model, variables, x, out = _parity(64)
  sd = flax_to_torchvision(variables, model)
  fresh = _torch_net(64, seed=5)
  fresh.load_state_dict(sd, strict=True)
  with torch.no_grad():
    back = fresh(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(back, out, atol=1e-4, rtol=1e-4)
  for k, v in net.state_dict().items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(sd[k].numpy(), v.numpy(), err_msg=k)


def test_width32_logits_match_torchvision_class_with_scaled_channels():
  net, _, variables, _, _ = _parity(32)
  # stem="small" is torchvision's net with conv1's stride 1 and no max-pool: same variables
  net.conv1[0].stride = (1, 1)
  net.maxpool = torch.nn.Identity()
  small = shufflenet.shufflenet_v2_x1_0(NUM_CLASSES, width=32, stem="small")
  x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(_eval(small, variables, x), ref, atol=1e-4, rtol=1e-4)


def test_train_mode_updates_batch_stats_and_ignores_filler():
  # the small stem on 16 px at width 16; variables from torchvision's class (model.init compiles
  # slowly on CPU: ~200 random initialisers), so the running stats start at random values
  model = shufflenet.shufflenet_v2_x1_0(NUM_CLASSES, width=16, stem="small")
  variables = torchvision_to_flax(_torch_net(16).state_dict(), model)
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32)
  filler = jnp.asarray(rng.normal(5.0, 3.0, size=(3, 16, 16, 3)), jnp.float32)

  @jax.jit
  def step(x, weights):
    return model.apply(variables, x, train=True, weights=weights, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})

  mask = jnp.array([1, 1, 1, 0, 0, 0], jnp.float32)
  logits, padded = step(jnp.concatenate([real, filler]), mask)
  assert logits.shape == (6, NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  changed = jax.tree.map(lambda a, b: bool(np.all(np.asarray(a) != np.asarray(b))),
                         variables["batch_stats"], padded["batch_stats"])
  assert all(jax.tree.leaves(changed)) and len(jax.tree.leaves(changed)) == 2 * 56
  # The real images alone: here twice, all weights 1 (every BatchNorm's mean and biased variance
  # of a batch repeated twice are the batch's), so that both calls share one compiled program.
  _, alone = step(jnp.concatenate([real, real]), jnp.ones(6, jnp.float32))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
               padded["batch_stats"], alone["batch_stats"])
  # and the filler matters without its 0 weights (the test would notice a dropped `weights`)
  _, unmasked = step(jnp.concatenate([real, filler]), jnp.ones(6, jnp.float32))
  assert not np.allclose(unmasked["batch_stats"]["conv1_1"]["mean"],
                         alone["batch_stats"]["conv1_1"]["mean"], atol=1e-2)


def test_init_distributions_follow_torch_defaults():
  # stages_repeats (1, 1, 1): the same layers as (4, 8, 4), initialised by the same code, but
  # a quarter of the initialisers to compile
  model = shufflenet.ShuffleNetV2(NUM_CLASSES, width=32, stem="small", stages_repeats=(1, 1, 1))
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False))
  variables = init(jax.random.key(0))
  params = variables["params"]
  for kernel in (params["conv5_0"]["kernel"], params["stage3_0"]["branch1_0"]["kernel"],
                 params["stage4_0"]["branch2_0"]["kernel"], params["fc"]["kernel"]):
    fan_in = int(np.prod(kernel.shape[:-1]))  # HWIO (I = 1 in a depthwise kernel) or [in, out]
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.1)
  assert np.abs(params["fc"]["bias"]).max() <= 1 / np.sqrt(512)
  assert params["stage3_0"]["branch1_0"]["kernel"].shape == (3, 3, 1, 58)
  for bn in (params["conv1_1"], params["stage2_0"]["branch2_4"]):
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)
  np.testing.assert_array_equal(variables["batch_stats"]["conv5_1"]["var"], 1.0)


def test_other_family_and_bad_stem_are_refused():
  tv = import_torchvision()
  torch.manual_seed(0)
  r18 = tv.models.resnet18(num_classes=NUM_CLASSES).state_dict()
  model = shufflenet.shufflenet_v2_x1_0(NUM_CLASSES)
  with pytest.raises(ValueError, match=r"no key conv1\.0\.weight: the file is a torchvision "
                     r"resnet18 .*, the model is shufflenet_v2_x1_0 width 64 stem 'imagenet'$"):
    torchvision_to_flax(r18, model)
  from pca_jax.models.resnet import ResNet18
  sd = _torch_net(32).state_dict()
  with pytest.raises(ValueError, match=r"the file is a torchvision shufflenet_v2 \(stages_repeats "
                     r"\(4, 8, 4\)\), the model is resnet18"):
    torchvision_to_flax(sd, ResNet18(num_classes=NUM_CLASSES))
  with pytest.raises(ValueError, match=r"conv1\.0\.weight has shape \(12, 3, 3, 3\) but the "
                     r"model expects \(24, 3, 3, 3\)"):
    torchvision_to_flax(sd, model)
  with pytest.raises(ValueError, match="unknown stem 'tiny'; use 'imagenet' or 'small'"):
    shufflenet.shufflenet_v2_x1_0(NUM_CLASSES, stem="tiny")
  with pytest.raises(ValueError, match="unknown stem 'tiny'"):
    shufflenet.ShuffleNetV2(stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert shufflenet.check_image_size(model, 1) is None
  assert "at least 1" in shufflenet.check_image_size(model, 0)
