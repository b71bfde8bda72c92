"""Parity with the reference trainer (issue 27): the same compressed sets, the same teacher, the same
student architecture and initialisation, trained by pca_jax's benchmark cell and by the paper's own
PyTorch trainer (`rethinkdc.train_KD.main`, the `rethinkdc` CLI run in-process), in hard and soft
mode, at the benchmark's image size and schedule. Same top-1 within run-to-run spread means the
protocol, not pca_jax's code, decides the benchmark's soft-label numbers.

It reads a finished benchmark run (benchmark/sets/, teacher/) and writes to OUT (default
WORKDIR/reference_parity): the teacher as a torchvision state_dict (flax_to_torchvision), the sets
and the test split as ImageFolders, results.jsonl (a rerun skips what is there) and parity.md.

  pip install --no-deps rethinkdc==0.3.2      # its own deps (torch, torchvision, wandb, rich,
                                              # datasets, pyyaml) come with requirements-bench.txt
  python tools/reference_parity.py --workdir=runs/soft

The reference's CLI needs these in-process patches on a CPU machine (../shared/ENV-NOTES.md): no
wandb login (WANDB_MODE=disabled), a pkg_resources stand-in (for its two yaml files),
torch.cuda.is_available() true for its main only and .cuda() a no-op, DataParallel the identity,
ImageFolderIPC.make_dataset taking torchvision's allow_empty, the val folder through
IMAGENET_VAL_DIR, its 224 / 256 px transforms at the run's image size, and the student and teacher
given as torchvision model names (`torchvision.models.__dict__[name]`, which it calls):
  pca_student  pca_jax's model (e.g. ResNet-18, small stem, width 16) as a torch module with the
               same keys, initialised from pca_jax's own init (exported);
  pca_teacher  the run's teacher, exported.
What stays the reference's own: data loading (ImageFolderIPC, PIL transforms), the RRC + flip
augmentation (at the cells' crop scale), CutMix (its numpy draws), the loss (CE, or KL batchmean at
T), AdamW with its weight-decay groups, the per-epoch cosine schedule, BatchNorm, evaluation.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import re
import sys
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------- torch student / teacher
def torch_resnet(layers, width: int, stem: str, num_classes: int):
  """A torch ResNet (BasicBlocks) with torchvision's module names at pca_jax's width and stem:
  torchvision's ResNet class fixes 64 channels and the 7x7 stem, its BasicBlock does not."""
  from torch import nn
  from torchvision.models.resnet import BasicBlock

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.inplanes = width
      if stem == "small":
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
      else:
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU(inplace=True)
      self.layer1 = self._layer(width, layers[0], 1)
      self.layer2 = self._layer(2 * width, layers[1], 2)
      self.layer3 = self._layer(4 * width, layers[2], 2)
      self.layer4 = self._layer(8 * width, layers[3], 2)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(8 * width, num_classes)

    def _layer(self, planes, blocks, stride):
      down = None
      if stride != 1 or self.inplanes != planes:
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                             nn.BatchNorm2d(planes))
      out = [BasicBlock(self.inplanes, planes, stride, down)]
      self.inplanes = planes
      out += [BasicBlock(planes, planes) for _ in range(1, blocks)]
      return nn.Sequential(*out)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(self.avgpool(x).flatten(1))

  return Net()


_LAYERS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def torch_model(config, num_classes: int, variables):
  """config.model as a torch module holding `variables` (pca_jax's, exported)."""
  import torch

  from pca_jax.models.registry import model_from_config
  from pca_jax.models.torch_weights import flax_to_torchvision
  name = config.model.name
  if name not in _LAYERS:
    raise ValueError(f"this parity check builds BasicBlock ResNets ({', '.join(_LAYERS)}); "
                     f"the run's model is {name}")
  net = torch_resnet(_LAYERS[name], int(config.model.width), config.model.stem, num_classes)
  model = model_from_config(config.model, num_classes, config.data.image_size)
  net.load_state_dict({k: torch.as_tensor(v) for k, v in
                       flax_to_torchvision(variables, model).items()}, strict=True)
  return net


def init_variables(config, num_classes: int, seed: int):
  """pca_jax's initialisation of config.model (the distribution its trainer draws from)."""
  import jax

  from pca_jax.models.registry import model_from_config
  model = model_from_config(config.model, num_classes, config.data.image_size)
  size = int(config.data.image_size)
  return jax.device_get(model.init(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32),
                                   train=False))


# ------------------------------------------------------------------------- the reference, patched
def patch_reference(size: int, crop_scale) -> None:
  """The in-process patches the rethinkdc CLI needs here (see the module docstring)."""
  os.environ["WANDB_MODE"] = "disabled"
  try:
    import rethinkdc
  except ImportError:
    raise ValueError("the reference trainer is not installed: pip install --no-deps "
                     "rethinkdc==0.3.2") from None
  import torch
  import torchvision.transforms as T
  from rethinkdc import imagenet_ipc
  root = os.path.dirname(rethinkdc.__file__)
  sys.modules["pkg_resources"] = types.SimpleNamespace(
      resource_filename=lambda pkg, rel: os.path.join(root, rel))
  real_available = torch.cuda.is_available

  def is_available():
    caller = sys._getframe(1).f_code
    return caller.co_name == "main" and caller.co_filename.endswith("train_KD.py") \
        or real_available()
  torch.cuda.is_available = is_available
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self
  torch.nn.DataParallel = lambda module, *a, **k: module
  make = imagenet_ipc.ImageFolderIPC.make_dataset
  imagenet_ipc.ImageFolderIPC.make_dataset = staticmethod(
      lambda directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False:
      make(directory, class_to_idx, extensions, is_valid_file))
  importlib.import_module("rethinkdc.utils_fkd")  # subclasses RandomResizedCrop: import it first

  class RandomResizedCrop(T.RandomResizedCrop):
    def __init__(self, _size, scale=None, **k):
      super().__init__(size, scale=tuple(crop_scale), **k)

  class Resize(T.Resize):
    def __init__(self, _size, **k):
      super().__init__(size, **k)

  class CenterCrop(T.CenterCrop):
    def __init__(self, _size):
      super().__init__(size)
  T.RandomResizedCrop, T.Resize, T.CenterCrop = RandomResizedCrop, Resize, CenterCrop


def reference_run(train_dir: str, val_dir: str, out: str, label: str, seed: int, ipc: int,
                  train_cfg, student, teacher) -> dict:
  """One rethinkdc.train_KD.main run; returns its last val/top1 and its losses."""
  import torch
  import torchvision
  from rethinkdc import train_KD
  torchvision.models.__dict__["pca_student"] = lambda pretrained=False, **k: student
  torchvision.models.__dict__["pca_teacher"] = lambda pretrained=True, **k: teacher
  os.environ["IMAGENET_VAL_DIR"] = val_dir
  argv = ["rethinkdc", train_dir, f"--{label}", "--model", "pca_student",
          "--teacher-model", "pca_teacher", "--ipc", str(ipc), "--epochs", str(train_cfg.epochs),
          "--batch-size", str(train_cfg.batch_size), "--workers", "0", "--output-dir", out,
          "--adamw-lr", str(train_cfg.lr), "--adamw-weight-decay", str(train_cfg.weight_decay),
          "--temperature", str(train_cfg.temperature), "--cutmix", str(train_cfg.cutmix_alpha)]
  torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
  os.makedirs(out, exist_ok=True)
  saved = sys.argv
  sys.argv = argv
  log = os.path.join(out, "stdout.txt")
  try:  # its per-epoch lines go to a file; their numbers are read back from it
    with open(log, "w") as f, contextlib.redirect_stdout(f):
      train_KD.main()
  finally:
    sys.argv = saved
  text = open(log).read()
  errs = re.findall(r"TEST Iter \d+: .*?Top-1 err = ([0-9.]+)", text)
  losses = re.findall(r"TRAIN Iter \d+: .*?loss = ([0-9.]+)", text)
  if not errs:
    raise RuntimeError(f"the reference printed no TEST line; see {log}")
  return {"top1": 100.0 - float(errs[-1]), "loss_first": float(losses[0]),
          "loss_last": float(losses[-1])}


def write_imagefolder(images: np.ndarray, labels: np.ndarray, names: list[str], out: str) -> None:
  from PIL import Image
  width = len(str(len(names) - 1))
  for i, (img, label) in enumerate(zip(images, labels)):
    d = os.path.join(out, f"{int(label):0{width}d}_{names[label]}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{i:05d}.png"))


def mean_std(values) -> str:
  a = np.asarray(values, float)
  return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a[0]:.1f}"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a finished benchmark run (sets + teacher)")
  p.add_argument("--out", default="")
  p.add_argument("--sets", default="random-ipc10-g1x1-s0,el2n_easy-ipc10-g1x1,sre2l-ipc10-g1x1-s0",
                 help="benchmark/sets/ names")
  p.add_argument("--labels", default="hard,soft")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--epochs", type=int, default=0, help="0: the run's train.epochs")
  a = p.parse_args(argv)
  import ml_collections
  import torch

  from pca_jax import fs
  from pca_jax.config import use_compile_cache
  from pca_jax.data import pipeline
  from pca_jax.data.store import load_compressed
  from pca_jax.dc.methods import METHODS
  from pca_jax.config import EVAL_DATA, config_values, fingerprint
  from pca_jax.dc.stages import cell_fingerprint, cell_trainer_config, load_teacher
  from pca_jax.pca.context import Run
  from pca_jax.training import InMemoryData, train
  from tests.helpers import import_torchvision
  import_torchvision()
  torch.set_num_threads(2)

  cfg_path = os.path.join(a.workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise ValueError(f"{a.workdir} has no config.json: give a finished benchmark run")
  config = ml_collections.ConfigDict(json.load(open(cfg_path)))
  use_compile_cache(config)  # every cell of the same shapes compiles once
  run = Run(config, a.workdir, log=lambda s: None)
  size, nc = int(config.data.image_size), run.train_source.num_classes
  patch_reference(size, config.train.crop_scale)  # first: a missing rethinkdc writes nothing
  out = a.out or os.path.join(a.workdir, "reference_parity")
  os.makedirs(out, exist_ok=True)
  names = list(run.train_source.class_names)
  # exports are named by what made them: another eval split or set is written anew, never reused
  val_dir = os.path.join(out, "val-" + fingerprint("val", config_values(config, EVAL_DATA)))
  if not os.path.isdir(val_dir):
    src = run.eval_source
    idx = np.arange(len(src))
    imgs = np.concatenate([b for b, _ in pipeline.iter_images(
        src, idx, size, 256, fit="center_crop", crop_fraction=config.data.eval_crop_fraction)])
    write_imagefolder(imgs, np.asarray(src.labels)[idx], names, val_dir + ".tmp")
    os.replace(val_dir + ".tmp", val_dir)
  jax_teacher = load_teacher(run)  # (apply_fn, variables)
  teacher = torch_model(config, nc, jax_teacher[1]).eval()
  for param in teacher.parameters():
    param.requires_grad = False
  # a row counts only under the fingerprint of its set, teacher and trainer config (the
  # benchmark's cell fingerprint); rows made from other inputs are ignored
  teacher_marker = fs.read_json(run.path("stages", "teacher.json"))
  results = os.path.join(out, "results.jsonl")
  stored = [json.loads(line) for line in open(results)] if os.path.exists(results) else []
  rows = []
  epochs = a.epochs or int(config.train.epochs)
  for set_name in a.sets.split(","):
    set_path = run.path("benchmark", "sets", set_name)
    cs = load_compressed(set_path)
    method = cs.manifest["method"]
    ipc = int(cs.manifest["ipc"])
    train_dir = os.path.join(out, "sets", f"{set_name}-{cs.manifest['fingerprint']}")
    if not os.path.isdir(train_dir):
      write_imagefolder(cs.images, cs.labels, names, train_dir + ".tmp")
      os.replace(train_dir + ".tmp", train_dir)
    for label in a.labels.split(","):
      for seed in [int(s) for s in a.seeds.split(",")]:
        cell = {"method": method, "ipc": ipc, "grid": (1, 1), "label": label, "seed": seed}
        mc = cell_trainer_config(run, cell, METHODS[method].crop)
        mc.train.update(dict(epochs=epochs, eval_every_epochs=0, log_every_steps=10 ** 9))
        fp = cell_fingerprint(run, teacher_marker, cs.manifest["fingerprint"], mc, label)
        for trainer in ("pca_jax", "reference"):
          rid = f"{set_name}-{label}-e{epochs}-s{seed}-{trainer}"
          same = [r for r in stored if r["id"] == rid and r.get("fingerprint") == fp]
          if same:
            rows.append(same[-1])
            continue
          if trainer == "pca_jax":
            _, m = train(mc, os.path.join(out, "runs", rid),
                         InMemoryData(cs.images, cs.labels, nc), run.eval_source, desc=rid,
                         log=lambda s: None, save_final=False,
                         teacher=jax_teacher if label == "soft" else None)
            r = {"top1": float(m["eval_top1"])}
          else:
            student = torch_model(config, nc, init_variables(config, nc, 1000 + seed))
            r = reference_run(train_dir, val_dir, os.path.join(out, "runs", rid), label, seed,
                              ipc, mc.train, student, teacher)
          row = {"id": rid, "set": set_name, "label": label, "seed": seed, "epochs": epochs,
                 "trainer": trainer, **r, "fingerprint": fp}
          with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
          rows.append(row)
          print(f"[parity] {rid}: top-1 {r['top1']:.1f} %", flush=True)
  lines = ["# pca_jax vs the reference trainer (rethinkdc) on the same sets", "",
           f"`python tools/reference_parity.py --workdir={a.workdir}` (and `--seeds=...` for more "
           "runs): final top-1 % on the test split, mean ± sample std over the runs (n per trainer).", "",
           "| set | epochs | labels | n | pca_jax | reference | difference |",
           "|---|---|---|---|---|---|---|"]
  for key in sorted({(r["set"], r["epochs"], r["label"]) for r in rows},
                    key=lambda k: (k[0], k[1], k[2])):
    sel = [r for r in rows if (r["set"], r["epochs"], r["label"]) == key]
    ours = [r["top1"] for r in sel if r["trainer"] == "pca_jax"]
    ref = [r["top1"] for r in sel if r["trainer"] == "reference"]
    if ours and ref:
      lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {min(len(ours), len(ref))} | "
                   f"{mean_std(ours)} | {mean_std(ref)} | {np.mean(ours) - np.mean(ref):+.1f} |")
  fs.save_text(os.path.join(out, "parity.md"), "\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:  # bad input: one line saying what to fix, exit 2 (as pca_jax.main)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
