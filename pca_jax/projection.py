"""What a run will cost, before it runs: images decoded, trained and scored per stage, the
benchmark's cells, soft-label bytes, and the projected wall time for stated throughputs.

`project(config, shape, rates)` counts from the config and the dataset's shape alone (class
sizes, eval split size): nothing is read or trained. The rehearsal prints it for the real config
(pca_jax.rehearsal) and the device check fills the rates with what it measured
(launch/device_check.sh). The model of a stage's time:

  device seconds = trained images / train rate + forward images / forward rate
  host seconds   = decoded images / (decode rate per core x host cores)
  wall seconds   = max(device, host)   (Grain decodes on the host while the device trains)

Rates are stated for ResNet-18 at 224 px (`Rates`); other sizes scale them by (224 / size)^2,
other models by their FLOPs (FLOPS_AT_224, times (width / 64)^2). JPEG decoding at <= 112 px
runs at twice the 224 px rate (DCT-scaled decoding, docs/speed.md). A forward pass is about a
third of a train step. These are first-order estimates: compilation, evaluation padding and
checkpoints are not counted.
"""

from __future__ import annotations

import copy
import dataclasses

# GFLOPs of one forward pass at 224 px, width 64 (torchvision's numbers); the rates scale by them
# GFLOPs (multiply-adds) at 224 px, torchvision's model cards; vit_s_16 from DeiT-S (4.6)
FLOPS_AT_224 = {"resnet10": 0.89, "resnet18": 1.82, "resnet34": 3.67, "resnet50": 4.11,
                "resnet101": 7.80, "mobilenet_v2": 0.30, "efficientnet_b0": 0.39,
                "shufflenet_v2_x1_0": 0.14, "vit_s_16": 4.6}


@dataclasses.dataclass(frozen=True)
class Rates:
  """Stated throughputs, for ResNet-18 at 224 px on the device and JPEGs at 224 px on the host."""
  train_img_per_s: float = 3000.0          # train step, images per second
  forward_img_per_s: float = 9000.0        # eval-mode forward (scoring, evaluation, soft labels)
  decode_img_per_s_per_core: float = 300.0  # host: read + decode + resize, per core
  host_cores: int = 16

  @classmethod
  def from_config(cls, plan) -> "Rates":
    return cls(float(plan.train_img_per_s), float(plan.forward_img_per_s),
               float(plan.decode_img_per_s_per_core), int(plan.host_cores))


@dataclasses.dataclass(frozen=True)
class Shape:
  """A dataset's shape: images per class of the train split, and the eval split's size."""
  name: str
  counts: tuple[int, ...]
  eval_images: int

  @property
  def num_classes(self) -> int:
    return len(self.counts)

  @property
  def train_images(self) -> int:
    return int(sum(self.counts))


@dataclasses.dataclass
class StageCost:
  """One stage's counts (images) and projected seconds."""
  name: str
  decoded: float = 0.0
  trained: float = 0.0     # model-images through a train step, in ResNet-18 224 px equivalents
  forward: float = 0.0     # model-images through an eval-mode forward, same units
  note: str = ""
  device_s: float = 0.0
  host_s: float = 0.0

  @property
  def wall_s(self) -> float:
    return max(self.device_s, self.host_s)

  def add(self, decoded: float = 0, trained: float = 0, forward: float = 0) -> None:
    self.decoded += decoded
    self.trained += trained
    self.forward += forward


def model_factor(model, size: int) -> float:
  """FLOPs of config.model at `size` px relative to ResNet-18 at 224 px."""
  flops = FLOPS_AT_224.get(model.name, FLOPS_AT_224["resnet18"]) * (model.width / 64) ** 2
  return flops / FLOPS_AT_224["resnet18"] * (size / 224) ** 2


def _epochs_evals(epochs: int, every: int) -> int:
  """Periodic evaluations of a run of `epochs` (the final one apart)."""
  return max(0, (epochs - 1) // every) if every else 0


def _score_cost(config, shape: Shape) -> StageCost:
  s = config.score
  cost = StageCost("score")
  if s.scores_path:
    cost.note = "precomputed scores"
    return cost
  n, k, e = shape.train_images, s.num_models, s.train.epochs
  f = model_factor(config.model, s.image_size or config.data.image_size)
  passes = 1 + (e if (s.forgetting or s.aum) else 0)  # the scoring pass, per-epoch passes
  cost.add(decoded=(e if s.together else k * e) * n + passes * n, trained=k * e * n * f,
           forward=k * passes * n * f)
  cost.note = f"{k} models x {e} epochs" + (", together" if s.together else "")
  return cost


def _teacher_cost(config, shape: Shape) -> StageCost:
  from pca_jax.dc.plan import needs_teacher
  b = config.benchmark
  cost = StageCost("teacher")
  if "benchmark" not in config.stages or not needs_teacher(b):
    return cost
  f = model_factor(config.model, config.data.image_size)
  evals = 1 + (0 if (b.teacher_weights or b.teacher_workdir) else
               _epochs_evals(b.teacher.epochs, b.teacher.eval_every_epochs))
  cost.add(decoded=evals * shape.eval_images, forward=evals * shape.eval_images * f)
  if not (b.teacher_weights or b.teacher_workdir):
    cost.add(decoded=b.teacher.epochs * shape.train_images,
             trained=b.teacher.epochs * shape.train_images * f)
    cost.note = f"{b.teacher.epochs} epochs"
  else:
    cost.note = "given"
  return cost


def _student_run(config, shape: Shape, cost: StageCost, stored: int, epochs: int, view: int,
                 soft: bool, evals: int, teacher_size: int, student: str = "") -> None:
  """A student (config.model, or the model named `student` at its width) trained `epochs` on
  `stored` images at `view` px, evaluated `evals` times; soft labels from config.model."""
  model = config.model
  if student:
    model = copy.deepcopy(model)
    model.name = student
  cost.add(trained=epochs * stored * model_factor(model, view),
           forward=(epochs * stored * model_factor(config.model, teacher_size) if soft else 0) +
           evals * shape.eval_images * model_factor(model, view),
           decoded=evals * shape.eval_images)


def _pca_costs(config, shape: Shape) -> list[StageCost]:
  """select / combine / store (host decodes), train, eval (and tune when scheduled)."""
  from pca_jax.config import cells, parse_stages
  stages = parse_stages(config.stages)
  out = []
  size, c = config.data.image_size, shape.num_classes
  stored = config.select.ipc * c
  if "tune" in stages:
    from pca_jax.pca.tune import candidates
    cost = StageCost("tune")
    cands = candidates(config)
    val = int(config.tune.val_fraction * shape.train_images)
    for cand in cands:
      cost.add(decoded=config.select.ipc * cand.cells * c)
      for _ in config.tune.seeds:
        _student_run(config, Shape(shape.name, shape.counts, val), cost, stored,
                     config.tune.epochs, cand.view_size(size), False, 1, size)
    cost.note = f"{len(cands)} candidates x {len(config.tune.seeds)} seeds"
    out.append(cost)
  if "combine" in stages:
    out.append(StageCost("combine", decoded=config.select.ipc * cells(config) * c))
  if "train" in stages:
    from pca_jax.training.views import view_sizes
    probe = config.train.copy_and_resolve_references()
    probe.image_size, probe.grid = size, tuple(config.combine.grid)
    view = view_sizes(probe)[0]
    cost = StageCost("train", note=f"{config.train.epochs} epochs of {stored} images")
    _student_run(config, shape, cost, stored, config.train.epochs, view, False,
                 _epochs_evals(config.train.epochs, config.train.eval_every_epochs), size)
    out.append(cost)
  if "eval" in stages:
    out.append(StageCost("eval", decoded=shape.eval_images,
                         forward=shape.eval_images * model_factor(config.model, size)))
  return out


def benchmark_cells(config, shape: Shape) -> tuple[list[dict], list[dict]]:
  """(cells that run, cells skipped with the reason) for this shape: plan_cells, then the
  smallest-class rule of the benchmark stage."""
  from pca_jax.dc.methods import METHODS
  from pca_jax.dc.plan import plan_cells
  cells, skipped = plan_cells(config.benchmark, tuple(config.combine.grid),
                              config.data.image_size, {}, config.model.name)
  smallest, run = min(shape.counts), []
  for cell in cells:
    need = cell["ipc"] * cell["grid"][0] * cell["grid"][1]
    if cell["method"] in METHODS and not METHODS[cell["method"]].fits(smallest, need):
      skipped.append({**cell, "reason": f"needs {need} images per class, smallest class has "
                                        f"{smallest}"})
    else:
      run.append(cell)
  return run, skipped


def _benchmark_cost(config, shape: Shape) -> tuple[StageCost, dict]:
  """The benchmark stage: set builds (once per set), every cell's student, the soft labels."""
  from pca_jax.dc import tables
  b, size, c = config.benchmark, config.data.image_size, shape.num_classes
  cells, skipped = benchmark_cells(config, shape)
  cost = StageCost("benchmark")
  sets, soft_bytes = set(), 0
  evals = 1 + _epochs_evals(config.train.epochs, b.eval_every_epochs)
  for cell in cells:
    g = cell["grid"]
    key = (cell["method"], cell["ipc"], tuple(g), cell["seed"])
    if key not in sets:
      sets.add(key)
      if cell["method"] in ("sre2l", "cda"):
        cost.add(trained=b.synthesis.iterations * cell["ipc"] * c * model_factor(config.model,
                                                                                 size))
      elif cell["method"] == "rded":
        crop = size // b.rded_factor
        cost.add(decoded=b.rded_mipc * c,
                 forward=b.rded_num_crop * b.rded_mipc * c * model_factor(config.model, crop))
      else:
        cost.add(decoded=cell["ipc"] * g[0] * g[1] * c)
    stored = cell["ipc"] * c
    view = size // g[0] if cell.get("resolution") == "patch" else size
    _student_run(config, shape, cost, stored, config.train.epochs, view, cell["label"] == "soft",
                 evals, size, cell.get("student", ""))
    if cell["label"] == "soft":
      soft_bytes += tables.soft_label_bytes(stored, config.train.epochs, c,
                                            b.soft_label_bytes_per_value)
  cost.note = f"{len(cells)} cells ({len(skipped)} skipped), {len(sets)} sets"
  return cost, {"cells": len(cells), "skipped": skipped, "sets": len(sets),
                "soft_label_bytes": soft_bytes}


def project(config, shape: Shape, rates: Rates) -> dict:
  """{"stages": [StageCost as dict], "total": {...}, "benchmark": {...}, "rates", "shape"} for
  the stages config.stages schedules, on a dataset of `shape`, at `rates`."""
  from pca_jax.config import parse_stages
  stages = parse_stages(config.stages)
  costs = []
  if "score" in stages:
    costs.append(_score_cost(config, shape))
  if "teacher" in stages:
    costs.append(_teacher_cost(config, shape))
  costs += _pca_costs(config, shape)
  bench = {}
  if "benchmark" in stages:
    cost, bench = _benchmark_cost(config, shape)
    costs.append(cost)
  decode_rate = rates.decode_img_per_s_per_core * rates.host_cores
  if min(config.data.image_size, config.score.image_size or config.data.image_size) <= 112:
    decode_rate *= 2.0
  for cost in costs:
    cost.device_s = cost.trained / rates.train_img_per_s + cost.forward / rates.forward_img_per_s
    cost.host_s = cost.decoded / decode_rate
  total = {k: sum(getattr(c, k) for c in costs) for k in ("decoded", "trained", "forward",
                                                          "device_s", "host_s")}
  total["wall_s"] = sum(c.wall_s for c in costs)
  return {"shape": {"name": shape.name, "classes": shape.num_classes,
                    "train_images": shape.train_images, "eval_images": shape.eval_images,
                    "counts": [min(shape.counts), max(shape.counts)]},
          "rates": dataclasses.asdict(rates),
          "stages": [dataclasses.asdict(c) | {"wall_s": c.wall_s} for c in costs],
          "total": total, "benchmark": bench}


def _human(n: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.1f}{unit}"
  return f"{n:.0f}"


def _hours(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def plan_markdown(plan: dict, title: str) -> str:
  """The plan as Markdown: one row per stage, the total, the benchmark's cells and bytes."""
  r, s = plan["rates"], plan["shape"]
  lines = [f"## {title}", "",
           f"Dataset shape: {s['name']}, {s['classes']} classes, {_human(s['train_images'])}"
           f" train images ({s['counts'][0]}-{s['counts'][1]} per class), "
           f"{_human(s['eval_images'])} eval images. Rates: train {r['train_img_per_s']:.4g} and "
           f"forward {r['forward_img_per_s']:.4g} img/s (ResNet-18 at 224 px), decoding "
           f"{r['decode_img_per_s_per_core']:.4g} img/s per core x {r['host_cores']} cores.", "",
           "| stage | images decoded | model-images trained* | forward* | device | host | "
           "wall | |", "|---|---|---|---|---|---|---|---|"]
  for c in plan["stages"]:
    lines.append(f"| {c['name']} | {_human(c['decoded'])} | {_human(c['trained'])} | "
                 f"{_human(c['forward'])} | {_hours(c['device_s'])} | {_hours(c['host_s'])} | "
                 f"{_hours(c['wall_s'])} | {c['note']} |")
  t = plan["total"]
  lines.append(f"| **total** | {_human(t['decoded'])} | {_human(t['trained'])} | "
               f"{_human(t['forward'])} | {_hours(t['device_s'])} | {_hours(t['host_s'])} | "
               f"**{_hours(t['wall_s'])}** | |")
  lines += ["", "*in ResNet-18-at-224-px equivalents (FLOPs); wall = max(device, host) per "
            "stage, summed."]
  b = plan["benchmark"]
  if b:
    lines += ["", f"Benchmark: {b['cells']} cells, {b['sets']} sets, soft labels "
              f"{b['soft_label_bytes'] / 1e9:.1f} GB if stored (fp16 per view per epoch)."]
    reasons = sorted({f"{s['method']} {s['grid'][0]}x{s['grid'][1]}"
                      + (f" IPC {s['ipc']}" if "ipc" in s else "") + f": {s['reason']}"
                      for s in b["skipped"]})
    if reasons:
      lines += ["Skipped:", *[f"- {x}" for x in reasons]]
  return "\n".join(lines) + "\n"
