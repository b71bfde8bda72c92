"""Loads a torchvision ResNet `state_dict` (a .pth file) into the Flax ResNet, exactly.

The reference DC benchmark takes its soft labels from torchvision's pretrained ResNet-18; this
module lets pca_jax use the same file:

  variables = load_torchvision_resnet("resnet18.pth", create_model("resnet18", 1000))
  logits = model.apply(variables, images_nhwc, train=False)

Name mapping (torchvision -> flax, blocks numbered in order layer1.0, layer1.1, ..., layer4.n):
  conv1 / bn1                        -> conv_init / bn_init
  layer{i}.{j}.conv{k} / .bn{k}      -> <Block>_{n}/Conv_{k-1} / BatchNorm_{k-1}
                                        (<Block>: ResNetBlock, or BottleneckResNetBlock for
                                        ResNet-50 whose blocks also have conv3 / bn3)
  layer{i}.{j}.downsample.0 / .1     -> <Block>_{n}/conv_proj / norm_proj
  fc                                 -> head
Conv weights are OIHW in torch and HWIO in flax; the fc weight is [out, in], the flax kernel
[in, out]. BatchNorm weight / bias are params scale / bias, running_mean / running_var are
batch_stats mean / var; num_batches_tracked is not used in eval mode and is dropped.

The model must have torchvision's geometry: stem="imagenet" (7x7 conv1 + max-pool) and width=64.
Inputs must be normalised as torchvision's weights expect, (x / 255 - mean) / std with the
ImageNet mean / std, in NHWC: `pca_jax.augment.normalize` with its defaults does exactly that.
PyTorch is an optional dependency (requirements-bench.txt), imported only to read files.
"""

from __future__ import annotations

import io
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pca_jax import fs
from pca_jax.models.resnet import BottleneckResNetBlock, ResNet

# (blocks per stage, bottleneck) -> torchvision name, to say what a file or a model is.
_ARCHS = {((1, 1, 1, 1), False): "resnet10", ((2, 2, 2, 2), False): "resnet18",
          ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
          ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}
_BN = (("weight", "params", "scale"), ("bias", "params", "bias"),
       ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


def _to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any float dtype, bfloat16 included) or array -> numpy; floats as float32."""
  if hasattr(value, "detach"):  # torch.Tensor: numpy() has no bfloat16
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def read_state_dict(path: fs.PathLike) -> dict[str, np.ndarray]:
  """Reads a file saved with `torch.save(model.state_dict(), path)`: {torch key: numpy array}.

  Float tensors come back as float32 arrays (e.g. fc.weight [1000, 512]), integer ones
  (num_batches_tracked) as int64. Also accepts a checkpoint dict that wraps the state dict under
  "state_dict" or "model", and strips DataParallel's "module." prefix. Loads with
  weights_only=True (no arbitrary pickles). Local paths or object-store URLs (gs://...).
  """
  try:
    import torch
  except ImportError:
    raise ValueError(f"reading {path} needs PyTorch: pip install -r requirements-bench.txt"
                     ) from None
  p = fs.path(path)
  try:
    if not p.is_file():
      what = "is a directory" if p.is_dir() else "does not exist"
      raise ValueError(f"teacher weights {path} {what}: pass the path of a torchvision .pth file")
    source = str(p) if not fs.is_remote(path) else io.BytesIO(p.read_bytes())
  except OSError as e:
    raise ValueError(f"cannot read {path}: {e}") from None
  try:
    obj = torch.load(source, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many kinds (pickle, zip, RuntimeError)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"cannot load {path} with torch.load(weights_only=True): {first}; save the "
                     "weights with torch.save(model.state_dict(), path)") from None
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict: save the weights "
                     "with torch.save(model.state_dict(), path)")
  if all(str(k).startswith("module.") for k in obj):  # saved from nn.DataParallel
    obj = {str(k)[len("module."):]: v for k, v in obj.items()}
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a "
                       "tensor; save the weights with torch.save(model.state_dict(), path)")
    out[str(key)] = _to_numpy(value)
  return out


def _describe_file(keys: Any) -> str:
  """What a state_dict's keys say, e.g. 'the file is a torchvision resnet34 (3, 4, 6, 3) basic'."""
  blocks = {}
  for k in keys:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      blocks.setdefault(int(m[1]), set()).add(int(m[2]))
  if not blocks:
    first = ", ".join(list(keys)[:4])
    return f"not a torchvision ResNet state_dict (first keys: {first})"
  sizes = tuple(len(blocks.get(i, ())) for i in range(1, max(blocks) + 1))
  bottleneck = any(k.endswith(".conv3.weight") for k in keys)
  name = _ARCHS.get((sizes, bottleneck), "ResNet")
  return f"the file is a torchvision {name} {sizes} {'bottleneck' if bottleneck else 'basic'}"


def _describe_model(model: ResNet) -> str:
  sizes = tuple(int(s) for s in model.stage_sizes)
  bottleneck = model.block_cls is BottleneckResNetBlock
  name = _ARCHS.get((sizes, bottleneck), "ResNet")
  return f"the model is {name} {sizes} {'bottleneck' if bottleneck else 'basic'}"


def _target(model: ResNet) -> dict[str, Any]:
  """model.init's variable tree as ShapeDtypeStructs (shapes do not depend on the image size)."""
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _mapping(model: ResNet, target: Mapping[str, Any]) -> list[tuple[str, str, tuple, str]]:
  """(torch key, flax collection, flax path, kind) for every variable of the model.

  kind: "conv" (OIHW -> HWIO), "dense" ([out, in] -> [in, out]) or "vector" (as is).
  """
  params = target["params"]
  out = [("conv1.weight", "params", ("conv_init", "kernel"), "conv")]

  def norm(torch_name, flax_module):
    for suffix, collection, leaf in _BN:
      out.append((f"{torch_name}.{suffix}", collection, (*flax_module, leaf), "vector"))
  norm("bn1", ("bn_init",))
  blocks = sorted((k for k in params if k not in ("conv_init", "bn_init", "head")),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
  names = [f"layer{i + 1}.{j}" for i, n in enumerate(model.stage_sizes) for j in range(n)]
  if len(names) != len(blocks):  # cannot happen for the ResNets in resnet.py
    raise ValueError(f"model has {len(blocks)} blocks but stage_sizes {model.stage_sizes}: not a "
                     "torchvision-layout ResNet")
  for torch_block, flax_block in zip(names, blocks):
    convs = sorted(k for k in params[flax_block] if re.fullmatch(r"Conv_\d+", k))
    for c in convs:
      n = int(c.split("_")[1])
      out.append((f"{torch_block}.conv{n + 1}.weight", "params", (flax_block, c, "kernel"),
                  "conv"))
      norm(f"{torch_block}.bn{n + 1}", (flax_block, f"BatchNorm_{n}"))
    if "conv_proj" in params[flax_block]:
      out.append((f"{torch_block}.downsample.0.weight", "params",
                  (flax_block, "conv_proj", "kernel"), "conv"))
      norm(f"{torch_block}.downsample.1", (flax_block, "norm_proj"))
  out += [("fc.weight", "params", ("head", "kernel"), "dense"),
          ("fc.bias", "params", ("head", "bias"), "vector")]
  return out


def _shape_hint(key: str, got: tuple, want: tuple, model: ResNet) -> str:
  """Why a shape differs, for the keys where the reason is known."""
  if key == "fc.weight" and got[1:] == want[1:] and got[0] != want[0]:
    return f": the file was trained for {got[0]} classes, the dataset has {want[0]}"
  if key == "fc.bias":
    return f": the file was trained for {got[0]} classes, the dataset has {want[0]}"
  if key == "conv1.weight" and len(got) == 4 and got[2:] != want[2:]:
    stem = "imagenet" if got[2:] == (7, 7) else "small" if got[2:] == (3, 3) else None
    fix = f"build the model with stem={stem!r}" if stem else "no pca_jax stem matches"
    return f": the file has a {got[2]}x{got[3]} stem conv, the model stem={model.stem!r}; {fix}"
  if key == "conv1.weight" and len(got) == 4 and got[0] != want[0]:
    return f": the file has width {got[0]}, the model width={model.width}; use width={got[0]}"
  return ""


def torchvision_to_flax(state_dict: Mapping[str, Any], model: ResNet) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} for `model`, from a torchvision ResNet state_dict.

  state_dict: {torch key: tensor or array} (torch tensors are accepted as they are). Returns
  nested dicts of float32 numpy arrays with exactly the structure and shapes of
  `model.init(...)`, ready for `model.apply(variables, x, train=False)`. Strict: every expected
  key must be present with its exact shape, and no key may be left unused (num_batches_tracked
  aside), so a file for another architecture, width, stem or number of classes fails with a
  one-line ValueError instead of loading silently wrong weights.
  """
  if not isinstance(model, ResNet):
    raise ValueError(f"torchvision weights load into a pca_jax ResNet, got {type(model).__name__}:"
                     " build it with pca_jax.models.create_model")
  if model.padding != "torch":
    raise ValueError(f"torchvision weights need the torchvision conv padding, but the model has "
                     f"padding={model.padding!r}; use model.padding='torch'")
  target = _target(model)
  mapping = _mapping(model, target)
  keys = [str(k) for k in state_dict]
  for key, *_ in mapping:
    if key not in state_dict:
      raise ValueError(f"state_dict has no key {key}: {_describe_file(keys)}, "
                       f"{_describe_model(model)}")
  expected = {key for key, *_ in mapping}
  unused = [k for k in keys if k not in expected and not k.endswith("num_batches_tracked")]
  if unused:
    shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
    raise ValueError(f"state_dict has {len(unused)} keys the model does not use ({shown}): "
                     f"{_describe_file(keys)}, {_describe_model(model)}")
  variables: dict[str, Any] = {}
  for key, collection, path, kind in mapping:
    leaf = target[collection]
    for name in path:
      leaf = leaf[name]
    want = tuple(leaf.shape)
    if kind == "conv":  # the torch shape the flax kernel corresponds to: OIHW from HWIO
      want = (want[3], want[2], want[0], want[1])
    elif kind == "dense":
      want = (want[1], want[0])
    value = _to_numpy(state_dict[key])
    got = tuple(value.shape)
    if got != want:
      raise ValueError(f"{key} has shape {got} but the model expects {want}"
                       f"{_shape_hint(key, got, want, model)}")
    value = value.astype(np.float32)
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "dense":
      value = value.T
    node = variables.setdefault(collection, {})
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return variables


def load_torchvision_resnet(path: fs.PathLike, model: ResNet) -> dict[str, Any]:
  """Reads a torchvision ResNet .pth file and returns `model`'s variables (see the above)."""
  try:
    return torchvision_to_flax(read_state_dict(path), model)
  except ValueError as e:
    if str(path) in str(e):
      raise
    raise ValueError(f"{path}: {e}") from None
