import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax.models.resnet import ResNet18, ResNet34, ResNet50, create_model


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
