"""The Flax ViT-S/16 (pca_jax.models.vit) against torchvision's VisionTransformer: same logits from
the same weights (ViT-S at 32 px, and at 224 px in the long tier; width 16; the small stem's
patch 4), the round trip back to a torch state_dict, train mode (dropout, no batch_stats, padding
cannot leak), init distributions, and the errors (other families' files, image sizes, stems).

Compiling a 12-layer ViT costs seconds on 2 CPU cores, so each model is jitted once (module
fixtures), the width-16 and small-stem parity use 2 layers (the full depth is tested at width 64)
and the other checks 1-layer models or jax.eval_shape.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
  pytest.importorskip("torch")
import torch

from pca_jax.models import vit
from pca_jax.models.torch_weights import flax_to_torchvision, torchvision_to_flax
from tests.helpers import import_torchvision

tv = import_torchvision()


def torch_vit(image_size: int, width: int = 64, patch: int = 16, num_classes: int = 10,
              num_layers: int = 12, seed: int = 0):
  """torchvision's VisionTransformer as vit_s_16 at `width` (hidden 6 * width, mlp 4 * hidden), in
  eval mode, with every zero / one / tiny-initialised tensor randomised (class token, head, all
  biases, LayerNorm weights) and a larger position embedding, so that each mapping matters."""
  torch.manual_seed(seed)
  d = 6 * width
  net = tv.models.VisionTransformer(image_size, patch, num_layers, 6, d, 4 * d,
                                    num_classes=num_classes)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.2)
      elif ".ln" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
    net.class_token.normal_(0.0, 1.0)
    net.encoder.pos_embedding.normal_(0.0, 0.5)
    net.heads.head.weight.normal_(0.0, 0.2)
  return net.eval()


def _jit_eval(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _parity(net, model, size: int, batch: int = 2):
  """(flax variables, flax logits, torch logits, NHWC input) for a random input."""
  variables = torchvision_to_flax(net.state_dict(), model)
  x = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = np.asarray(_jit_eval(model)(variables, x.transpose(0, 2, 3, 1)))
  assert out.shape == ref.shape == (batch, 10) and out.dtype == np.float32
  assert 1 < np.abs(ref).max() < 100  # the random weights neither vanish nor explode the logits
  return variables, out, ref, x.transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def vit_s_32():
  net = torch_vit(32)
  model = vit.vit_s_16(10, image_size=32)
  return (net, model, *_parity(net, model, 32))


def test_vit_s_16_logits_match_torchvision(vit_s_32):
  net, model, variables, out, ref, _ = vit_s_32
  # float32 on both sides, other summation orders: seen max |diff| 4.1e-6 at max |logit| 5.6
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
  params = variables["params"]
  assert set(variables) == {"params"}  # no batch_stats: the model has no BatchNorm
  assert params["pos_embedding"].shape == (1, 5, 384)  # 2 x 2 patches + the class token
  assert params["encoder_layer_11"]["self_attention"]["in_proj"]["kernel"].shape == (384, 1152)
  np.testing.assert_array_equal(
      params["encoder_layer_3"]["self_attention"]["in_proj"]["kernel"],
      net.state_dict()["encoder.layers.encoder_layer_3.self_attention.in_proj_weight"].numpy().T)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                           train=False))
  assert jax.tree.structure(variables) == jax.tree.structure(init)


def test_round_trip_loads_strict_into_torchvision(vit_s_32):
  net, model, variables, out, _, x = vit_s_32
  sd = flax_to_torchvision(variables, model)
  fresh = copy.deepcopy(net)
  with torch.no_grad():
    for t in fresh.state_dict().values():
      t.zero_()  # every weight is then what the export holds
  fresh.load_state_dict(sd, strict=True)
  with torch.no_grad():
    back = fresh(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(back, out, atol=1e-4, rtol=1e-4)


def test_width_16_matches_torchvision_hidden_96():
  """Width 16: hidden 96, mlp 384, 6 heads of 16 (2 layers: the depth is tested at width 64)."""
  net = torch_vit(32, width=16, num_layers=2)
  model = vit.VisionTransformer(10, width=16, image_size=32, num_layers=2)
  variables, out, ref, _ = _parity(net, model, 32)
  assert variables["params"]["encoder_layer_0"]["mlp_0"]["kernel"].shape == (96, 384)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)  # seen 1.4e-6


@pytest.fixture(scope="module")
def small_16():
  """The small stem (patch 4) at width 16: torchvision's class with patch_size=4 on 16 px (2
  layers, to compile fast)."""
  net = torch_vit(16, width=16, patch=4, num_layers=2)
  model = vit.VisionTransformer(10, width=16, stem="small", image_size=16, num_layers=2)
  return (net, model, *_parity(net, model, 16, batch=4))


def test_small_stem_is_patch_4_and_matches_torchvision(small_16):
  _, model, variables, out, ref, _ = small_16
  assert model.patch_size == 4
  assert variables["params"]["conv_proj"]["kernel"].shape == (4, 4, 3, 96)
  assert variables["params"]["pos_embedding"].shape == (1, 17, 96)  # 4 x 4 patches + class
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)  # seen 1.9e-6
  full = vit.vit_s_16(10, width=16, stem="small")  # all 12 layers: the output shape
  v = jax.eval_shape(lambda: full.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  assert jax.eval_shape(lambda v: full.apply(v, jnp.zeros((3, 16, 16, 3))), v).shape == (3, 10)


def test_train_mode_has_no_batch_stats_and_ignores_weights(small_16):
  """train=True with mutable=["batch_stats"] (as the training step calls it) works and returns
  no batch_stats: {} without a "batch_stats" input, {"batch_stats": {}} with an empty one. With
  dropout 0, train logits equal eval logits, and a real image's logits do not depend on the
  filler images next to it nor on the example weights (LayerNorm is per token)."""
  _, model, variables, out, _, x = small_16

  @jax.jit
  def train(v, x, w):
    return model.apply(v, x, train=True, weights=w, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(0)})

  filler = np.random.default_rng(7).normal(size=x[2:].shape).astype(np.float32) * 3
  a, upd_a = train(variables, x, jnp.ones(4))
  b, upd_b = train({**variables, "batch_stats": {}}, np.concatenate([x[:2], filler]),
                   jnp.array([1.0, 1.0, 0.0, 0.0]))
  assert upd_a == {} and upd_b == {"batch_stats": {}}
  assert a.shape == (4, 10) and a.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(a), out, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(b)[:2], np.asarray(a)[:2], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_train_mode():
  """dropout / attention_dropout (fields, default 0 as torchvision) draw from the "dropout" rng
  stream in train mode only; in eval they are exact identities."""
  kw = dict(num_classes=10, width=4, stem="small", num_layers=1)
  plain = vit.VisionTransformer(**kw)
  drop = vit.VisionTransformer(**kw, dropout=0.5, attention_dropout=0.5)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), x[:1], train=False))
  leaves, tree = jax.tree.flatten(shapes)  # random values everywhere (the head starts at zero)
  v = jax.tree.unflatten(tree, [np.random.default_rng(i).normal(size=a.shape).astype(np.float32)
                                for i, a in enumerate(leaves)])

  @jax.jit
  def run(key):
    evals = [m.apply(v, x, train=False) for m in (plain, drop)]
    return evals, [drop.apply(v, x, train=True, rngs={"dropout": k})
                   for k in jax.random.split(key)]

  (e_plain, e_drop), (one, two) = run(jax.random.key(1))
  np.testing.assert_array_equal(e_drop, e_plain)
  assert not np.allclose(one, two) and not np.allclose(one, e_plain)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: drop.apply(v, x, train=True))  # no rng: dropout is really drawn


def test_init_distributions_follow_torchvision():
  """torchvision's init: conv_proj trunc_normal(std sqrt(1 / fan_in)) with zero bias, class token
  and head zero, pos_embedding N(0, 0.02), attention in_proj xavier_uniform over the packed
  [3D, D] matrix with zero bias, out_proj U(+-1/sqrt(D)) with zero bias, MLP xavier_uniform with
  N(0, 1e-6) biases, LayerNorms 1 / 0."""
  model = vit.VisionTransformer(10, width=16, num_layers=1)
  v = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))()
  assert set(v) == {"params"}
  p = jax.tree.map(np.asarray, v["params"])
  d = 96
  assert p["pos_embedding"].shape == (1, 5, d)
  assert abs(p["pos_embedding"].std() - 0.02) < 0.003
  assert abs(p["conv_proj"]["kernel"].std() - math.sqrt(1 / 768)) < 0.05 * math.sqrt(1 / 768)
  for zero in (p["class_token"], p["head"]["kernel"], p["head"]["bias"], p["conv_proj"]["bias"],
               p["encoder_layer_0"]["self_attention"]["in_proj"]["bias"],
               p["encoder_layer_0"]["self_attention"]["out_proj"]["bias"], p["ln"]["bias"]):
    assert not zero.any()
  np.testing.assert_array_equal(p["ln"]["scale"], np.ones(d))

  def uniform(a, bound):  # U(-bound, bound): inside, and reaching near the bound
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound

  layer = p["encoder_layer_0"]
  uniform(layer["self_attention"]["in_proj"]["kernel"], math.sqrt(6 / (d + 3 * d)))
  uniform(layer["self_attention"]["out_proj"]["kernel"], 1 / math.sqrt(d))
  uniform(layer["mlp_0"]["kernel"], math.sqrt(6 / (d + 4 * d)))
  uniform(layer["mlp_3"]["kernel"], math.sqrt(6 / (d + 4 * d)))
  assert 0 < np.abs(layer["mlp_0"]["bias"]).max() < 1e-5


def test_other_family_files_and_wrong_sizes_are_refused(vit_s_32, small_16):
  net = vit_s_32[0]
  r18 = tv.models.resnet18(num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"no key conv_proj\.weight: the file is a torchvision "
                     r"resnet18 .*the model is vit_s_16 width 64"):
    torchvision_to_flax(r18, vit.vit_s_16(10, image_size=32))
  from pca_jax.models.resnet import ResNet18
  with pytest.raises(ValueError, match=r"no key conv1\.weight: the file is a torchvision "
                     "VisionTransformer with 12 encoder layers, the model is resnet18"):
    torchvision_to_flax(net.state_dict(), ResNet18(num_classes=10))
  # loading torchvision weights needs the model built with the file's image_size (here 16)
  small = small_16[0].state_dict()
  kw = dict(num_classes=10, stem="small", num_layers=2)
  with pytest.raises(ValueError, match=r"encoder\.pos_embedding has shape \(1, 17, 96\) but the "
                     r"model expects \(1, 65, 96\)"):
    torchvision_to_flax(small, vit.VisionTransformer(**kw, width=16))  # image_size 0: 32 px
  with pytest.raises(ValueError, match=r"conv_proj\.weight has shape \(96, 3, 4, 4\) but the "
                     r"model expects \(24, 3, 4, 4\)"):
    torchvision_to_flax(small, vit.VisionTransformer(**kw, width=4, image_size=16))


def test_image_sizes_and_stems():
  model = vit.vit_s_16(10)
  assert vit.check_image_size(model, 224) is None and vit.check_image_size(model, 32) is None
  assert "divisible by its patch size 16, got 40" in vit.check_image_size(model, 40)
  assert "patch size 16, got 8" in vit.check_image_size(model, 8)
  small = vit.vit_s_16(10, stem="small")
  assert vit.check_image_size(small, 12) is None and "got 10" in vit.check_image_size(small, 10)
  assert "built for 224 px" in vit.check_image_size(vit.vit_s_16(10, image_size=224), 32)
  with pytest.raises(ValueError, match="unknown stem 'cifar'; use 'imagenet' or 'small'"):
    vit.vit_s_16(10, stem="cifar")
  with pytest.raises(ValueError, match="unknown stem 'cifar'; use 'imagenet' or 'small'"):
    vit.VisionTransformer(10, stem="cifar").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  tiny = vit.VisionTransformer(10, width=4, stem="small", num_layers=1)
  with pytest.raises(ValueError, match="not divisible by the patch size 4"):
    tiny.init(jax.random.key(0), jnp.zeros((1, 10, 10, 3)))
  v = jax.eval_shape(lambda: tiny.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  with pytest.raises(ValueError, match="position embedding has 4 patches, the 16x16 input has 16"):
    jax.eval_shape(lambda: tiny.apply(v, jnp.zeros((1, 16, 16, 3))))
  with pytest.raises(ValueError, match="built for 32x32 images"):
    jax.eval_shape(lambda: vit.vit_s_16(10, 16, image_size=32).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = vit.VisionTransformer(10, width=4, stem="small", num_layers=1, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 8, 8, 3))
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), v)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


@pytest.mark.long
def test_vit_s_16_at_224_matches_torchvision():
  """torchvision's own size (14 x 14 patches + class token = 197 tokens); seen 7.2e-6 at max
  |logit| 6.1."""
  net = torch_vit(224)
  _, out, ref, _ = _parity(net, vit.vit_s_16(10, image_size=224), 224)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
