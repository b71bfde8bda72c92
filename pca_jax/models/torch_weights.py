"""Loads a torchvision `state_dict` (a .pth file) into the Flax models, exactly, and back.

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

import dataclasses
import io
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pca_jax import fs
from pca_jax.models import efficientnet, mobilenet, shufflenet, vit
from pca_jax.models.resnet import BottleneckResNetBlock, ResNet, torch_bn_keys as bn_keys

# (blocks per stage, bottleneck) -> torchvision name, to say what a file or a model is.
_ARCHS = {((1, 1, 1, 1), False): "resnet10", ((2, 2, 2, 2), False): "resnet18",
          ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
          ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


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


def _resnet_keys(keys: Sequence[str]) -> str | None:
  """What a ResNet state_dict's keys say, e.g. 'torchvision resnet34 (3, 4, 6, 3) basic'."""
  blocks: dict[int, set[int]] = {}
  for k in keys:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      blocks.setdefault(int(m[1]), set()).add(int(m[2]))
  if not blocks:
    return None
  sizes = tuple(len(blocks.get(i, ())) for i in range(1, max(blocks) + 1))
  bottleneck = any(k.endswith(".conv3.weight") for k in keys)
  name = _ARCHS.get((sizes, bottleneck), "ResNet")
  return f"torchvision {name} {sizes} {'bottleneck' if bottleneck else 'basic'}"


def _resnet_model(model: ResNet) -> str:
  sizes = tuple(int(s) for s in model.stage_sizes)
  bottleneck = model.block_cls is BottleneckResNetBlock
  name = _ARCHS.get((sizes, bottleneck), "ResNet")
  return f"{name} {sizes} {'bottleneck' if bottleneck else 'basic'}"


def _resnet_check(model: ResNet) -> None:
  if model.padding != "torch":
    raise ValueError(f"torchvision weights need the torchvision conv padding, but the model has "
                     f"padding={model.padding!r}; use model.padding='torch'")


def _target(model: nn.Module) -> dict[str, Any]:
  """model.init's variable tree as ShapeDtypeStructs, for a 32 x 32 input (only a ViT's position
  embedding depends on the image size: its family maps it at the size the model was built for)."""
  size = getattr(model, "image_size", 0) or 32
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _resnet_mapping(model: ResNet, target: Mapping[str, Any]) -> list[tuple[str, str, tuple, str]]:
  """(torch key, flax collection, flax path, kind) for every variable of a ResNet.

  kind: "conv" (OIHW -> HWIO), "dense" ([out, in] -> [in, out]) or "vector" (as is).
  """
  params = target["params"]
  out = [("conv1.weight", "params", ("conv_init", "kernel"), "conv")]
  out += bn_keys("bn1", ("bn_init",))
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
      out += bn_keys(f"{torch_block}.bn{n + 1}", (flax_block, f"BatchNorm_{n}"))
    if "conv_proj" in params[flax_block]:
      out.append((f"{torch_block}.downsample.0.weight", "params",
                  (flax_block, "conv_proj", "kernel"), "conv"))
      out += bn_keys(f"{torch_block}.downsample.1", (flax_block, "norm_proj"))
  out += [("fc.weight", "params", ("head", "kernel"), "dense"),
          ("fc.bias", "params", ("head", "bias"), "vector")]
  return out


@dataclasses.dataclass(frozen=True)
class Family:
  """How one architecture family maps onto torchvision's state_dict layout.

  module: the Flax class; mapping(model, target) -> [(torch key, flax collection, flax path,
  kind)] for every variable of `model` (target: model.init's tree of shapes); describe_keys(keys)
  -> what a state_dict of this family is ("torchvision resnet34 ..."), None if it is not one;
  describe_model(model) -> what the model is; check(model) raises ValueError for a model that is
  not in torchvision's layout (e.g. ResNet padding="same").
  """
  name: str
  module: type
  mapping: Callable[[Any, Mapping[str, Any]], list[tuple[str, str, tuple, str]]]
  describe_keys: Callable[[Sequence[str]], str | None]
  describe_model: Callable[[Any], str]
  check: Callable[[Any], None] = lambda model: None


def families() -> list[Family]:
  """Every family with a torchvision mapping (ResNets first)."""
  out = [Family("resnet", ResNet, _resnet_mapping, _resnet_keys, _resnet_model, _resnet_check)]
  for name, module, cls in (("mobilenet_v2", mobilenet, mobilenet.MobileNetV2),
                            ("efficientnet", efficientnet, efficientnet.EfficientNet),
                            ("shufflenet", shufflenet, shufflenet.ShuffleNetV2),
                            ("vit", vit, vit.VisionTransformer)):
    out.append(Family(name, cls, module.torch_mapping, module.describe_keys,
                      module.describe_model))
  return out


def _family_of(model: Any) -> Family:
  for family in families():
    if isinstance(model, family.module):
      return family
  raise ValueError(f"no torchvision layout is known for a {type(model).__name__}: build the model "
                   "with pca_jax.models.create_model")


def _describe_file(keys: Sequence[str]) -> str:
  for family in families():
    what = family.describe_keys(keys)
    if what:
      return f"the file is a {what}"
  first = ", ".join(list(keys)[:4])
  return f"the file is no torchvision model pca_jax knows (first keys: {first})"


def _shape_hint(key: str, got: tuple, want: tuple, model: Any) -> str:
  """Why a shape differs, for the keys where the reason is known."""
  if key in ("fc.weight", "fc.bias", "classifier.1.weight", "classifier.1.bias",
             "heads.head.weight", "heads.head.bias") and got[1:] == want[1:] and got[0] != want[0]:
    return f": the file was trained for {got[0]} classes, the dataset has {want[0]}"
  if key == "conv1.weight" and len(got) == 4 and got[2:] != want[2:]:
    stem = "imagenet" if got[2:] == (7, 7) else "small" if got[2:] == (3, 3) else None
    fix = f"build the model with stem={stem!r}" if stem else "no pca_jax stem matches"
    return f": the file has a {got[2]}x{got[3]} stem conv, the model stem={model.stem!r}; {fix}"
  if key == "encoder.pos_embedding" and len(got) == 3 and got[1] != want[1]:
    patch = getattr(model, "patch_size", 16)
    side = int(round((got[1] - 1) ** 0.5)) * patch
    return (f": the file's position embedding has {got[1] - 1} patches ({side} px images at patch "
            f"{patch}); build the model with image_size={side}")
  if key == "conv1.weight" and len(got) == 4 and got[0] != want[0]:
    return f": the file has width {got[0]}, the model width={model.width}; use width={got[0]}"
  return ""


def _torch_shape(shape: tuple, kind: str) -> tuple:
  """The torch shape a flax variable of `shape` corresponds to."""
  if kind == "conv":  # OIHW from HWIO
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "dense":
    return (shape[1], shape[0])
  return tuple(shape)


def torchvision_to_flax(state_dict: Mapping[str, Any], model: Any) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} for `model`, from a torchvision state_dict of its family.

  state_dict: {torch key: tensor or array} (torch tensors are accepted as they are). Returns
  nested dicts of float32 numpy arrays with exactly the structure and shapes of
  `model.init(...)`, ready for `model.apply(variables, x, train=False)`. Strict: every expected
  key must be present with its exact shape, and no key may be left unused (num_batches_tracked
  aside), so a file for another architecture, width, stem or number of classes fails with a
  one-line ValueError instead of loading silently wrong weights.
  """
  family = _family_of(model)
  family.check(model)
  target = _target(model)
  mapping = family.mapping(model, target)
  keys = [str(k) for k in state_dict]
  for key, *_ in mapping:
    if key not in state_dict:
      raise ValueError(f"state_dict has no key {key}: {_describe_file(keys)}, the model is "
                       f"{family.describe_model(model)}")
  expected = {key for key, *_ in mapping}
  unused = [k for k in keys if k not in expected and not k.endswith("num_batches_tracked")]
  if unused:
    shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
    raise ValueError(f"state_dict has {len(unused)} keys the model does not use ({shown}): "
                     f"{_describe_file(keys)}, the model is {family.describe_model(model)}")
  variables: dict[str, Any] = {}
  for key, collection, path, kind in mapping:
    leaf = target[collection]
    for name in path:
      leaf = leaf[name]
    want = _torch_shape(tuple(leaf.shape), kind)
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


def flax_to_torchvision(variables: Mapping[str, Any], model: Any) -> dict[str, Any]:
  """The inverse of torchvision_to_flax: a torchvision state_dict ({key: torch.Tensor}) of
  `model`'s variables, loadable with `torchvision_model.load_state_dict(sd)` (strict): every
  BatchNorm also gets its `num_batches_tracked` (0; torch uses it only when momentum is None).

  E.g. to train a pca_jax teacher's sets with the reference (PyTorch) trainer:
    torch.save(flax_to_torchvision(variables, model), "teacher.pth")
  """
  try:
    import torch
  except ImportError:
    raise ValueError("exporting to torchvision needs PyTorch: pip install -r "
                     "requirements-bench.txt") from None
  family = _family_of(model)
  family.check(model)
  target = _target(model)
  out: dict[str, Any] = {}
  for key, collection, path, kind in family.mapping(model, target):
    leaf = variables.get(collection) if isinstance(variables, Mapping) else None
    want = target[collection]
    for name in path:
      if not isinstance(leaf, Mapping) or name not in leaf:
        raise ValueError(f"variables have no {collection}/{'/'.join(path)} (torch {key}): they "
                         f"are not those of {family.describe_model(model)}")
      leaf, want = leaf[name], want[name]
    value = np.asarray(jax.device_get(leaf), np.float32)
    if value.shape != tuple(want.shape):
      raise ValueError(f"{collection}/{'/'.join(path)} has shape {value.shape} but "
                       f"{family.describe_model(model)} has {tuple(want.shape)}")
    if kind == "conv":
      value = value.transpose(3, 2, 0, 1)
    elif kind == "dense":
      value = value.T
    out[key] = torch.from_numpy(np.array(value, np.float32, order="C"))  # writable, owned
    if key.endswith(".running_var"):
      out[key[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
  return out


def load_torchvision(path: fs.PathLike, model: Any) -> dict[str, Any]:
  """Reads a torchvision .pth file and returns `model`'s variables (see torchvision_to_flax)."""
  try:
    return torchvision_to_flax(read_state_dict(path), model)
  except ValueError as e:
    if str(path) in str(e):
      raise
    raise ValueError(f"{path}: {e}") from None


load_torchvision_resnet = load_torchvision  # the name before other families existed
