"""Which benchmark cells to run (method x grid x IPC x label mode x seed x resolution x student),
what the benchmark needs (scores, a teacher), and the benchmark block's checks."""

from __future__ import annotations

import copy
from typing import Sequence

from pca_jax.dc.methods import EXTERNAL, METHODS

LABEL_MODES = ("hard", "soft")


def method_names(bench) -> list[str]:
  return [m.strip() for m in str(bench.methods).split(",") if m.strip()]


def needs_teacher(bench) -> bool:
  """A teacher is trained (or loaded) when soft labels are asked for or a method needs one."""
  return "soft" in tuple(bench.label_modes) or any(
      METHODS[m].teacher for m in method_names(bench) if m in METHODS)


def needs_scores(bench) -> bool:
  """The score stage's outputs are read when some method ranks by a score."""
  return any(METHODS[m].score for m in method_names(bench) if m in METHODS)


def cell_id(c: dict) -> str:
  """e.g. "pca-ipc10-g2x2-hard-s0", "...-s0-rpatch" (resolution), "...-s0-mobilenet_v2" (a
  student other than config.model's: the cells of the main student keep their ids whatever
  benchmark.students lists, so adding a student reruns nothing that ran)."""
  g = c["grid"]
  res = c.get("resolution", "full")
  return (f"{c['method']}-ipc{c['ipc']}-g{g[0]}x{g[1]}-{c['label']}-s{c['seed']}"
          + ("" if res == "full" else f"-r{res}")
          + (f"-{c['student']}" if c.get("student") else ""))


def students(bench, model_name: str) -> list[str]:
  """The benchmark's students in order: benchmark.students, or config.model's alone."""
  names = [str(s).strip() for s in (bench.get("students") or ()) if str(s).strip()]
  return names or [model_name]


def table_student(bench, model_name: str) -> str:
  """The student of the paper-style tables (the cross-architecture table shows them all):
  model.name's cells, or the first listed student's when model.name is not a student."""
  names = students(bench, model_name)
  return model_name if model_name in names else names[0]


def plan_cells(bench, combine_grid: Sequence[int], image_size: int,
               external: dict[str, int] | None = None, model_name: str = ""
               ) -> tuple[list[dict], list[dict]]:
  """All cells to run, and the skipped ones with the reason (grid not dividing the image size).

  Each method's grids come from its registry entry (pca_jax.dc.methods): whole images (1x1), the
  PCA grid, or every grid of the sweep (bench.grids); external runs once per given set at its own
  IPC. Resolutions other than "full" apply to mosaics with square cells only. Every cell runs
  once per student (benchmark.students); a cell of another student than model_name (config.model's)
  carries it as "student".
  """
  methods = method_names(bench)
  names_of_students = students(bench, model_name)
  for m in methods:
    if m not in METHODS and m != EXTERNAL:
      raise ValueError(f"unknown benchmark method {m!r}; choose from "
                       f"{','.join([*METHODS, EXTERNAL])}")
  for label in bench.label_modes:
    if label not in LABEL_MODES:
      raise ValueError(f"unknown benchmark label mode {label!r}; use hard and/or soft")
  cells, skipped = [], []
  for method in methods:
    names = [None]
    if method == EXTERNAL:
      grids = [(1, 1)]
      names = sorted(external or {})
      if not names:
        raise ValueError("method 'external' needs --config.benchmark.external=name=/path/to/imagefolder")
    else:
      grids = METHODS[method].grids_for(bench, combine_grid)
    for name in names:
      for grid in grids:
        if image_size % grid[0] or image_size % grid[1]:
          skipped.append({"method": method, "grid": grid,
                          "reason": f"grid {grid[0]}x{grid[1]} does not divide {image_size}px"})
          continue
        resolutions = [r for r in bench.get("resolutions", ("full",))
                       if r == "full" or (grid[0] == grid[1] > 1)]
        for ipc in ([external[name]] if name else list(bench.ipcs)):
          for label in bench.label_modes:
            for seed in bench.seeds:
              for res in resolutions:
                for student in names_of_students:
                  c = {"method": method if not name else f"{EXTERNAL}:{name}", "ipc": int(ipc),
                       "grid": (int(grid[0]), int(grid[1])), "label": label, "seed": int(seed)}
                  if res != "full":
                    c["resolution"] = res
                  if student != model_name:
                    c["student"] = student
                  cells.append(c)
  return cells, skipped


def check_benchmark_block(config) -> None:
  """The benchmark block, for runs with the benchmark stage: the plan (methods, label modes,
  grids), RDED's and the recovery's numbers, the eval cadence, CCS."""
  from pca_jax.config import check_int_at_least, check_positive_int
  from pca_jax.dc.synthesis import check_synthesis_block
  from pca_jax.scoring import SCORES
  from pca_jax.selection import check_ccs_fields
  bench = config.benchmark
  for field in ("rded_mipc", "rded_num_crop", "rded_factor", "soft_label_bytes_per_value"):
    check_positive_int(f"benchmark.{field}", bench[field])
  cells, _ = plan_cells(bench, tuple(config.combine.grid), config.data.image_size, {"x": 1},
                        config.model.name)
  check_students(config, cells)
  rded = [c for c in cells if c["method"] == "rded"]
  if rded:
    need = max(c["ipc"] for c in rded) * bench.rded_factor ** 2
    if need > bench.rded_mipc:
      raise ValueError(f"benchmark.rded_mipc={bench.rded_mipc} candidate images per class, but "
                       f"rded at IPC {max(c['ipc'] for c in rded)} stitches ipc x rded_factor^2 = "
                       f"{need} crops of distinct images per class; set benchmark.rded_mipc >= "
                       f"{need} or drop that IPC")
  check_synthesis_block(bench.synthesis)
  check_int_at_least("benchmark.eval_every_epochs", bench.eval_every_epochs, 0,
                     " (0 = final evaluation only)")
  if bench.ccs_score not in SCORES:
    raise ValueError(f"unknown benchmark.ccs_score {bench.ccs_score!r}; choose one of "
                     f"{tuple(SCORES)}")
  check_ccs_fields("benchmark", bench.ccs_beta, bench.ccs_strata)
  _check_precomputed_scores(config)


def _check_precomputed_scores(config) -> None:
  """With score.scores_path the score stage writes only that one score, as score.kind: every
  method must rank by it."""
  if not config.score.scores_path:
    return
  for name in method_names(config.benchmark):
    score = METHODS[name].score_name(config) if name in METHODS else None
    if score and score != config.score.kind:
      raise ValueError(f"benchmark method {name} ranks by {score} scores, but score.scores_path "
                       f"gives only precomputed {config.score.kind} scores (score.kind); drop "
                       f"{name} from benchmark.methods, set score.kind to the scores' kind, or "
                       "leave score.scores_path empty to compute every score")


def check_students(config, cells: list[dict]) -> None:
  """benchmark.students: registered models, each able to take the views its cells train on
  (e.g. a ViT's patch size must divide them); benchmark.student_overrides: train fields of listed
  students; sre2l / cda need a teacher (config.model) with BatchNorm."""
  from pca_jax.models.registry import STUDENTS, has_batch_norm, image_size_problem
  from pca_jax.training.views import view_sizes
  bench, model = config.benchmark, config.model
  names = students(bench, model.name)
  for name in names:
    if name not in STUDENTS:
      raise ValueError(f"unknown benchmark student {name!r}; choose from {', '.join(STUDENTS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"benchmark.students lists a student twice: {', '.join(names)}")
  for name, fields in (bench.get("student_overrides") or {}).items():
    if name not in STUDENTS:
      raise ValueError(f"benchmark.student_overrides names {name!r}, not a model; choose from "
                       f"{', '.join(STUDENTS)}")
    for field in fields:
      if field not in config.train:
        raise ValueError(f"benchmark.student_overrides.{name}.{field} is not a train field; "
                         f"use one of config.train's (e.g. lr, warmup_epochs, weight_decay)")
  sizes = {}
  for c in cells:
    tc = copy.deepcopy(config.train)
    tc.grid, tc.resolution = tuple(c["grid"]), c.get("resolution", "full")
    tc.image_size = config.data.image_size
    sizes.setdefault(c.get("student", model.name), set()).update(view_sizes(tc)[:2])
  for name in names:
    for size in sorted(sizes.get(name, ())):
      problem = image_size_problem(name, size, model.width, model.stem)
      if problem:
        raise ValueError(f"benchmark student {name} cannot train on the {size} px views of this "
                         f"benchmark: {problem}")
  dd = [m for m in method_names(bench) if m in ("sre2l", "cda")]
  if dd and not has_batch_norm(model.name):
    raise ValueError(f"benchmark methods {', '.join(dd)} recover images from the teacher's "
                     f"BatchNorm statistics, but the teacher (model.name={model.name}) has no "
                     "BatchNorm; use a ResNet / MobileNet / EfficientNet / ShuffleNet teacher or "
                     "drop them")
