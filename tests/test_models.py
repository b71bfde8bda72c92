import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax.models.registry import create_model
from pca_jax.models.resnet import ResNet18, ResNet34, ResNet50


def _param_count(model, size):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                        train=False))
  return sum(x.size for x in jax.tree.leaves(v["params"])), v


@pytest.mark.parametrize("model,expected", [(ResNet18, 11_689_512), (ResNet34, 21_797_672),
                                            (ResNet50, 25_557_032)])
def test_param_count_matches_torchvision(model, expected):
  count, _ = _param_count(model(num_classes=1000), 224)
  assert count == expected


def test_resnet18_imagenet_logits_shape():
  m = ResNet18(num_classes=1000)
  out = jax.eval_shape(lambda: m.init_with_output(jax.random.key(0), jnp.zeros((2, 224, 224, 3)),
                                                  train=False)[0])
  assert out.shape == (2, 1000) and out.dtype == jnp.float32


@pytest.mark.long
def test_small_stem_train_and_eval_modes():
  m = create_model("resnet10", num_classes=5, width=4, stem="small")
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  v = m.init(jax.random.key(0), x, train=False)
  assert "batch_stats" in v
  logits, new = m.apply(v, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 5)
  # train mode updates running statistics; eval mode is deterministic and does not.
  before = jax.tree.leaves(v["batch_stats"])
  after = jax.tree.leaves(new["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  e1 = m.apply(v, x, train=False)
  e2 = m.apply(v, x, train=False)
  np.testing.assert_array_equal(e1, e2)


def test_bf16_compute_keeps_float32_params():
  m = create_model("resnet10", num_classes=3, width=4, stem="small", dtype="bfloat16")
  x = jnp.ones((2, 8, 8, 3))
  v = m.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  assert m.apply(v, x, train=False).dtype == jnp.float32


def test_create_model_rejects_bad_names():
  with pytest.raises(ValueError, match="unknown model"):
    create_model("resnet19", 10)
  with pytest.raises(ValueError, match="unknown stem"):
    create_model("resnet18", 10, stem="tiny")
  with pytest.raises(ValueError, match="unknown dtype"):
    create_model("resnet18", 10, dtype="fp8")


@pytest.mark.long
def test_max_pool_matches_flax_values_and_gradient():
  import flax.linen as nn
  from pca_jax.models.resnet import max_pool_3x3_s2
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
  for h, w in [(8, 8), (7, 9), (1, 1), (2, 3), (5, 4)]:
    x = jax.random.normal(jax.random.key(h * 10 + w), (2, h, w, 3))
    np.testing.assert_array_equal(max_pool_3x3_s2(x), ref(x))
    g = jax.grad(lambda x: (max_pool_3x3_s2(x) ** 2).sum())(x)
    g_ref = jax.grad(lambda x: (ref(x) ** 2).sum())(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)
  # ties: the whole gradient goes to the first maximum of each window (PyTorch's rule)
  g = jax.grad(lambda x: max_pool_3x3_s2(x).sum())(jnp.zeros((1, 4, 4, 1)))
  expected = np.zeros((4, 4))
  expected[:2, :2] = 1
  np.testing.assert_array_equal(g[0, :, :, 0], expected)
  # under jit (how the train step runs it)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  np.testing.assert_allclose(jax.jit(jax.grad(lambda x: max_pool_3x3_s2(x).sum()))(x),
                             jax.grad(lambda x: ref(x).sum())(x))


def test_materialize_is_an_exact_identity_with_identity_gradient():
  from pca_jax.models.resnet import materialize
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) * 1e30
  x = x.at[0, 0, 0, 0].set(jnp.inf)  # a non-finite first element must not leak anywhere
  y = jax.jit(materialize)(x)
  np.testing.assert_array_equal(y, x)
  g = jax.jit(jax.grad(lambda x: (materialize(x) * jnp.arange(3.0)).sum()))(x)
  np.testing.assert_array_equal(g, np.broadcast_to(np.arange(3.0), x.shape))
  if jax.default_backend() == "cpu":  # the division is what keeps XLA from duplicating x
    hlo = jax.jit(materialize).lower(x).as_text()
    assert "divide" in hlo


def test_cpu_xla_flags_set_on_import_and_respect_the_user(tmp_path):
  import os
  import subprocess
  import sys
  code = "import pca_jax, os; print(os.environ.get('XLA_FLAGS', ''))"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda **extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra},
                                       capture_output=True, text=True, check=True).stdout.strip()
  import pca_jax
  assert run() == " ".join(pca_jax.CPU_XLA_FLAGS)
  assert run(XLA_FLAGS="--xla_force_host_platform_device_count=2").split() == [
      "--xla_force_host_platform_device_count=2", *pca_jax.CPU_XLA_FLAGS]
  mine = "--xla_cpu_experimental_ynn_fusion_type="
  assert run(XLA_FLAGS=mine) == mine  # the user's own YNN choice wins
  assert run(PCA_JAX_XLA_CPU_DEFAULTS="0") == ""
  # and the flag is live in this process: convolutions compile to XLA's own kernels, not YNNPACK
  assert pca_jax.CPU_XLA_FLAGS[0] in os.environ["XLA_FLAGS"]
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
  args = jnp.zeros((4, 16, 16, 32)), jnp.zeros((3, 3, 32, 32))  # YNNPACK takes this one by default
  compiled = conv.lower(*args).compile().as_text()
  assert "convolution" in compiled and "ynn" not in compiled.lower()


def test_batch_norm_matches_flax_values_stats_and_gradients():
  import flax.linen as nn
  from pca_jax.models.resnet import BatchNorm
  x = jax.random.normal(jax.random.key(1), (6, 5, 3, 7)) * 3.0 + 1.5
  kw = dict(momentum=0.9, epsilon=1e-5)
  ours, ref = BatchNorm(use_running_average=False, **kw), nn.BatchNorm(use_running_average=False,
                                                                        **kw)
  v = ref.init(jax.random.key(0), x)
  v_ours = ours.init(jax.random.key(0), x)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v)  # checkpoints are interchangeable
  v = {"params": {"scale": jnp.linspace(0.5, 2.0, 7), "bias": jnp.linspace(-1.0, 1.0, 7)},
       "batch_stats": {"mean": jnp.full((7,), 0.3), "var": jnp.full((7,), 2.0)}}
  w = jax.random.normal(jax.random.key(2), x.shape)

  def loss(module, params, x):
    y, new = module.apply({**v, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y) * w), (y, new["batch_stats"])
  (l1, (y1, s1)), g1 = jax.value_and_grad(loss, (1, 2), has_aux=True)(ours, v["params"], x)
  (l2, (y2, s2)), g2 = jax.value_and_grad(loss, (1, 2), has_aux=True)(ref, v["params"], x)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((s1, g1)), jax.tree.leaves((s2, g2))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # eval mode uses the running averages, like flax
  e1 = BatchNorm(use_running_average=True, **kw).apply(v, x)
  e2 = nn.BatchNorm(use_running_average=True, **kw).apply(v, x)
  np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)
  # bf16 compute: bf16 out, float32 statistics
  yb = BatchNorm(use_running_average=False, dtype=jnp.bfloat16, **kw).apply(
      v, x.astype(jnp.bfloat16), mutable=["batch_stats"])[0]
  assert yb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(yb, np.float32), y2, rtol=0.05, atol=0.05)


def test_batch_norm_train_gradient_includes_the_statistics_outputs():
  from pca_jax.models.resnet import batch_norm_train
  x = jax.random.normal(jax.random.key(3), (4, 3, 3, 5)) * 2.0 - 0.5
  scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-0.2, 0.2, 5)

  def plain(x, scale, bias):  # the same function, autodiffed
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(x * x, (0, 1, 2)) - mean ** 2
    return (x - mean) * scale / jnp.sqrt(var + 1e-5) + bias, mean, var

  def loss(fn, *args):
    y, mean, var = fn(*args)
    return jnp.sum(jnp.cos(y)) + jnp.sum(mean * jnp.arange(5.0)) + jnp.sum(var ** 2)
  got = jax.grad(lambda *a: loss(lambda *b: batch_norm_train(*b, 1e-5, jnp.float32), *a),
                 (0, 1, 2))(x, scale, bias)
  want = jax.grad(lambda *a: loss(plain, *a), (0, 1, 2))(x, scale, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_weighted_batch_norm_equals_batch_norm_of_the_weighted_examples_alone():
  """Weight-0 rows (padding) change neither the statistics nor the real rows' outputs and
  gradients; general weights give the autodiffed weighted formula (with the statistics outputs)."""
  from pca_jax.models.resnet import batch_norm_train, batch_norm_train_weighted
  x = jax.random.normal(jax.random.key(4), (7, 3, 2, 5)) * 2.0 + 0.7
  scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-0.2, 0.2, 5)
  real = 4
  mask = jnp.asarray([1.0] * real + [0.0] * (7 - real))
  cot = jax.random.normal(jax.random.key(5), x.shape)

  def loss(y, mean, var):  # only the real rows reach the loss, as with weight-0 examples
    return jnp.sum(jnp.sin(y[:real]) * cot[:real]) + jnp.sum(mean * jnp.arange(5.0)) + \
        jnp.sum(var ** 2)
  got = jax.value_and_grad(lambda x, s, b: loss(*batch_norm_train_weighted(
      x, mask, s, b, 1e-5, jnp.float32)), (0, 1, 2))(x, scale, bias)
  want = jax.value_and_grad(lambda x, s, b: loss(*batch_norm_train(
      x, s, b, 1e-5, jnp.float32)), (0, 1, 2))(x[:real], scale, bias)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(got[1][0][:real], want[1][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[1][0][real:], 0.0, atol=1e-6)  # padding gets no gradient
  for a, b in zip(got[1][1:], want[1][1:]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  y, mean, var = batch_norm_train_weighted(x, mask, scale, bias, 1e-5, jnp.float32)
  y_real, mean_real, var_real = batch_norm_train(x[:real], scale, bias, 1e-5, jnp.float32)
  np.testing.assert_allclose(y[:real], y_real, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose((mean, var), (mean_real, var_real), rtol=1e-5, atol=1e-6)

  w = jnp.asarray([0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 0.25])

  def plain(x, scale, bias):  # the weighted statistics, autodiffed
    wb = w.reshape(-1, 1, 1, 1)
    count = jnp.sum(w) * 6
    mean = jnp.sum(wb * x, (0, 1, 2)) / count
    var = jnp.sum(wb * x * x, (0, 1, 2)) / count - mean ** 2
    return (x - mean) * scale / jnp.sqrt(var + 1e-5) + bias, mean, var

  def full_loss(y, mean, var):
    return jnp.sum(jnp.sin(y) * cot) + jnp.sum(mean * jnp.arange(5.0)) + jnp.sum(var ** 2)
  got = jax.grad(lambda *a: full_loss(*batch_norm_train_weighted(a[0], w, a[1], a[2], 1e-5,
                                                                jnp.float32)), (0, 1, 2))(
      x, scale, bias)
  want = jax.grad(lambda *a: full_loss(*plain(*a)), (0, 1, 2))(x, scale, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.long
def test_train_step_on_a_padded_batch_equals_a_step_on_the_real_images():
  """A compressed set's last batch: k real images + weight-0 filler. The update (params and
  BatchNorm running statistics) equals the update on a batch of only the k real images."""
  import optax
  from pca_jax.models.registry import create_model
  from pca_jax.training import steps
  model = create_model("resnet10", 3, width=4, stem="small")
  tx = optax.sgd(0.1, momentum=0.9)
  state = steps.create_train_state(model, tx, jax.random.key(0), (8, 8, 3))
  views = jax.random.normal(jax.random.key(1), (10, 8, 8, 3))
  labels = jnp.arange(10) % 3
  real = 4
  weights = jnp.asarray([1.0] * real + [0.0] * (10 - real))
  update = jax.jit(steps.train_update, static_argnums=(4, 5))  # compiled: faster than op by op
  spec = steps.LossSpec(3, weighted_batch_stats=True)
  padded, m_pad = update(state, views, labels, weights, spec, None, None)
  alone, m_alone = update(state, views[:real], labels[:real], jnp.ones(real), steps.LossSpec(3),
                          None, None)
  np.testing.assert_allclose(m_pad["loss"], m_alone["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((padded.params, padded.batch_stats)),
                  jax.tree.leaves((alone.params, alone.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  unweighted, _ = update(state, views, labels, weights, steps.LossSpec(3), None, None)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(unweighted.batch_stats), jax.tree.leaves(alone.batch_stats)))
  assert diff > 1e-3  # without the weights the filler moves the statistics (the old behaviour)


def test_torchvision_initialisation_and_zero_init_residual_option():
  import jax
  import numpy as np
  from flax.traverse_util import flatten_dict
  from pca_jax.models.registry import create_model
  x = jax.numpy.zeros((1, 32, 32, 3))
  for zero in (False, True):
    model = create_model("resnet18", 10, width=32, stem="small", zero_init_residual=zero)
    params = flatten_dict(model.init(jax.random.key(0), x, train=False)["params"], sep="/")
    last_bn = [k for k in params if k.endswith("BatchNorm_1/scale")]
    assert len(last_bn) == 8  # the second BatchNorm of each of ResNet-18's 8 basic blocks
    for k in last_bn:
      assert np.all(np.asarray(params[k]) == (0.0 if zero else 1.0)), k
  # kaiming_normal_(mode="fan_out", relu): std sqrt(2 / (3 * 3 * out_channels))
  k = np.asarray(params["ResNetBlock_7/Conv_1/kernel"])
  assert k.shape == (3, 3, 256, 256)
  assert np.std(k) == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.02)
  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
  bound = 1 / np.sqrt(256)
  for name in ("head/kernel", "head/bias"):
    v = np.asarray(params[name])
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound
