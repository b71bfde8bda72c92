"""torchvision ResNet state_dicts load into the Flax ResNet and give the same logits."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
  pytest.importorskip("torch")  # CI installs requirements-bench.txt, so these run there
import torch
from torch import nn

from pca_jax.models.registry import create_model
from pca_jax.models.torch_weights import load_torchvision_resnet, read_state_dict, \
  torchvision_to_flax


# torchvision's ResNet, written out (torchvision/models/resnet.py, v0.28): same modules, key
# names, shapes and forward pass. Used where torchvision cannot be imported: the PyPI wheel of
# torchvision 0.28 is linked against CUDA torch and fails to import next to the CPU torch wheel.
class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class TorchResNet(nn.Module):

  def __init__(self, block, layers, num_classes: int = 1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def _make_layer(self, block, planes: int, blocks: int, stride: int = 1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


_LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
            "resnet50": (Bottleneck, (3, 4, 6, 3))}


def _torchvision():
  """torchvision.models (requirements-bench.txt installs it; tests.helpers.import_torchvision
  imports PyPI's CUDA-linked wheel next to the CPU torch), else None: the ResNets above."""
  if importlib.util.find_spec("torchvision") is None:
    return None
  from tests.helpers import import_torchvision
  return import_torchvision().models


def torch_resnet(name: str, num_classes: int, seed: int = 0) -> nn.Module:
  """A torchvision ResNet in eval mode, with random BatchNorm scale / bias / running stats (so
  that the BN mapping is tested, not the 1 / 0 defaults)."""
  torch.manual_seed(seed)
  models = _torchvision()
  if models is not None:
    net = getattr(models, name)(num_classes=num_classes)
  else:
    block, layers = _LAYOUTS[name]
    net = TorchResNet(block, layers, num_classes)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
    if name == "resnet101":  # 33 residual additions of random-BN branches: keep the logits ~10
      for m in net.modules():
        if hasattr(m, "bn3"):
          m.bn3.weight.mul_(0.3)
  return net.eval()


def _compare(name: str, num_classes: int, size: int, tmp_path):
  """Max |flax - torch| on 2 random inputs, and the same with flax's old "SAME" padding."""
  net = torch_resnet(name, num_classes)
  path = tmp_path / f"{name}.pth"
  torch.save(net.state_dict(), path)
  model = create_model(name, num_classes, width=64, stem="imagenet")
  variables = load_torchvision_resnet(path, model)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  assert out.shape == ref.shape == (2, num_classes)
  # flax's "SAME" (model.padding="same", the layout before) pads the stride-2 3x3 convs (0, 1)
  # instead of (1, 1): visibly other logits with the same weights.
  old = create_model(name, num_classes, width=64, stem="imagenet", padding="same")
  same = np.asarray(old.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  with pytest.raises(ValueError, match="need the torchvision conv padding"):
    load_torchvision_resnet(path, old)
  return out, ref, same


def _check(out, ref, same, atol):
  """float32 on both sides with other summation orders, so the error is rounding: it grows with
  the logits' magnitude (seen: 4e-6 at max |logit| 8 for ResNet-18, 5e-5 at 38 for ResNet-50),
  hence the bound relative to the largest logit besides the absolute one where logits are ~10."""
  scale = np.abs(ref).max()
  assert 1 < scale < 100  # the random BN statistics neither vanish nor explode the activations
  np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
  assert np.abs(out - ref).max() <= 1e-5 * scale
  # "SAME" shifted every stride-2 3x3 conv on even sizes by a pixel: seen 0.76 and 16.4.
  assert np.abs(same - ref).max() > 1e-2 * scale


def test_resnet18_logits_match_torchvision(tmp_path):
  _check(*_compare("resnet18", 1000, 224, tmp_path), atol=1e-4)


def test_resnet50_bottleneck_logits_match_torchvision(tmp_path):
  # 64px keeps it cheap (~4 s); 64 -> 32 -> 16 -> 8 -> 4 -> 2: every stride-2 conv sees even sizes
  _check(*_compare("resnet50", 10, 64, tmp_path), atol=1e-3)


def test_resnet101_logits_match_torchvision(tmp_path):
  if _torchvision() is None:
    pytest.importorskip("torchvision")
  _check(*_compare("resnet101", 10, 64, tmp_path), atol=1e-3)


def test_export_round_trip_gives_torchs_logits():
  """flax_to_torchvision(variables) loads strictly into torchvision's model, whose eval logits
  equal the Flax model's (the export of a pca_jax-trained teacher for the reference trainer)."""
  from pca_jax.models.torch_weights import flax_to_torchvision
  model = create_model("resnet18", 10, width=64, stem="imagenet")
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  variables = jax.device_get(model.init(jax.random.key(3), x, train=False))
  # trained-looking statistics: non-trivial BN so that every mapping is exercised
  variables = jax.tree.map(lambda v: v + 0.1 * np.random.default_rng(v.size).normal(
      size=v.shape).astype(np.float32) ** 2, variables)
  sd = flax_to_torchvision(variables, model)
  net = torch_resnet("resnet18", 10)
  net.load_state_dict(sd, strict=True)
  with torch.no_grad():
    ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  out = np.asarray(model.apply(variables, x, train=False))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  assert np.abs(ref).max() > 1e-2
  back = torchvision_to_flax(sd, model)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"variables have no params/conv_init/kernel"):
    flax_to_torchvision({"params": {}}, model)


def test_variables_have_the_structure_of_init(tmp_path):
  sd = torch_resnet("resnet18", 7).state_dict()
  model = create_model("resnet18", 7)
  variables = torchvision_to_flax(sd, model)  # torch tensors are accepted directly
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                           train=False))
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(init)):
    assert a.shape == b.shape and a.dtype == np.float32
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(variables["batch_stats"]["ResNetBlock_2"]["norm_proj"]["var"],
                                sd["layer2.0.downsample.1.running_var"].numpy())


def test_read_state_dict_unwraps_checkpoints_and_data_parallel(tmp_path):
  sd = torch_resnet("resnet18", 3).state_dict()
  wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
  torch.save(wrapped, tmp_path / "ckpt.pt")
  got = read_state_dict(tmp_path / "ckpt.pt")
  assert list(got) == list(sd)
  np.testing.assert_array_equal(got["conv1.weight"], sd["conv1.weight"].numpy())
  torch.save({"model": {k: v.to(torch.bfloat16) for k, v in sd.items()}}, tmp_path / "bf16.pt")
  assert read_state_dict(tmp_path / "bf16.pt")["fc.weight"].dtype == np.float32


def test_wrong_number_of_classes_names_fc(tmp_path):
  torch.save(torch_resnet("resnet18", 1000).state_dict(), tmp_path / "r18.pth")
  with pytest.raises(ValueError, match=r"fc\.weight has shape \(1000, 512\) but the model "
                     r"expects \(10, 512\): the file was trained for 1000 classes, the dataset "
                     r"has 10"):
    load_torchvision_resnet(tmp_path / "r18.pth", create_model("resnet18", 10))


def test_other_architecture_stem_or_width_is_refused():
  r18 = torch_resnet("resnet18", 10).state_dict()
  r34 = torch_resnet("resnet34", 10).state_dict()
  with pytest.raises(ValueError, match=r"80 keys the model does not use .*resnet34 .*the model "
                     "is resnet18"):
    torchvision_to_flax(r34, create_model("resnet18", 10))
  with pytest.raises(ValueError, match=r"no key layer1\.2\.conv1\.weight: the file is a "
                     "torchvision resnet18"):
    torchvision_to_flax(r18, create_model("resnet34", 10))
  with pytest.raises(ValueError, match=r"no key layer3\.1\.bn2\.running_var"):
    torchvision_to_flax({k: v for k, v in r18.items() if k != "layer3.1.bn2.running_var"},
                        create_model("resnet18", 10))
  with pytest.raises(ValueError, match=r"1 keys the model does not use \(extra\.weight\)"):
    torchvision_to_flax({**r18, "extra.weight": torch.zeros(1)}, create_model("resnet18", 10))
  with pytest.raises(ValueError, match=r"7x7 stem conv, the model stem='small'; build the model "
                     "with stem='imagenet'"):
    torchvision_to_flax(r18, create_model("resnet18", 10, stem="small"))
  with pytest.raises(ValueError, match=r"file has width 64, the model width=32"):
    torchvision_to_flax(r18, create_model("resnet18", 10, width=32))
  with pytest.raises(ValueError, match=r"no torchvision model pca_jax knows \(first keys: a\.w"):
    torchvision_to_flax({"a.w": torch.zeros(1)}, create_model("resnet18", 10))


def test_unreadable_files_are_one_line_errors(tmp_path):
  model = create_model("resnet18", 10)
  with pytest.raises(ValueError, match="does not exist: pass the path of a torchvision .pth"):
    load_torchvision_resnet(tmp_path / "missing.pth", model)
  (tmp_path / "junk.pth").write_bytes(b"not a torch file")
  with pytest.raises(ValueError, match=r"cannot load .*junk\.pth with torch\.load") as e:
    load_torchvision_resnet(tmp_path / "junk.pth", model)
  assert "\n" not in str(e.value)
  torch.save([1, 2], tmp_path / "list.pth")
  with pytest.raises(ValueError, match="holds a list, not a state_dict"):
    read_state_dict(tmp_path / "list.pth")


@pytest.mark.long
def test_benchmark_teacher_from_torchvision_weights(tmp_path):
  """benchmark.teacher_weights: a torchvision state_dict becomes the benchmark's teacher, is
  evaluated once (the full-data accuracy of HLR), and labels the soft-label cells; a missing
  file or two teachers are refused up front."""
  import json
  from pca_jax import main as pca_main
  from tests.test_benchmark import _bench_config
  net = torch_resnet("resnet18", 10)
  torch.save(net.state_dict(), tmp_path / "r18.pth")
  c = _bench_config(methods="random", label_modes=("soft",),
                    teacher_weights=str(tmp_path / "r18.pth"))
  c.stages = "teacher,benchmark"
  c.model.update(dict(name="resnet18", width=64, stem="imagenet", zero_init_residual=False))
  c.train.epochs = 1
  pca_main.run_pipeline(c, tmp_path / "run")
  summary = json.loads((tmp_path / "run/stages/teacher.json").read_text())["summary"]
  assert summary["teacher_weights"] == str(tmp_path / "r18.pth")
  assert 0 <= summary["eval_top1"] <= 100
  rows = json.loads((tmp_path / "run/benchmark.json").read_text())["rows"]
  assert [(r["method"], r["label"]) for r in rows] == [("random", "soft")]
  md = (tmp_path / "run/benchmark.md").read_text()
  assert f"full data (teacher): {summary['eval_top1']:.1f} %" in md
  for bad, message in ((dict(teacher_weights=str(tmp_path / "missing.pth")), "does not exist"),
                       (dict(teacher_weights=str(tmp_path / "r18.pth"), teacher_workdir="x"),
                        "both set")):
    c2 = _bench_config(methods="random", label_modes=("soft",), **bad)
    c2.stages = "teacher,benchmark"
    with pytest.raises(ValueError, match=message):
      pca_main.run_pipeline(c2, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()
