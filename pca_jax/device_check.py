"""The prepared accelerator check: the numbers the project needs from the first GPU it gets.

  python -m pca_jax.device_check --check_out=DIR [--tiny]      (launch/device_check.sh [--tiny] DIR)

Measures, in this order, and writes DIR/device_check.json and DIR/device_check.md:
  1. train: the ResNet-18 train step at 224 px (the PCA student's: an in-memory set, patch crops
     on the device), bfloat16 and float32, batch 256 and 512: img/s after compilation (median of
     timed steps), compile time (first call minus a steady step), device memory in use after the
     steps and the process's peak so far (memory_stats; none on a CPU);
  2. score: the EL2N forward pass (eval mode) at 224 px, batch 512, float32 and bfloat16;
  3. score_stage: the real score stage (K = 4 ResNet-18 at 112 px, 1 epoch over photo JPEGs)
     with the models trained together and one after another, and the ratio of their wall times
     (the scoring-at-scale target: >= 1.5x);
  4. pipeline: the Grain pipeline on photo JPEGs with one reader thread per host core, at 224
     and 112 px;
  5. projection: the wall time of configs/ipc50.py and configs/benchmark_imagenet.py on this
     machine from those rates (pca_jax.projection: the train rate of the configs' precision at
     batch 256, the float32 forward rate, the 224 px decode rate per core, the host's cores).
Every section is timed; once --budget_s is spent the remaining sections are skipped and say so
(the default fits an 8-minute slot with the start-up of a fresh machine). --tiny runs every
section at toy sizes (32 px, width 8, a few steps, 64 photos): the CI test, on a CPU.
Nothing is downloaded: the photos are made from scikit-learn's two sample images
(speedbench._photo_folder), and what the host lacks comes as wheels (launch/device_check.sh).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import sys
import time
import types

from absl import app, flags

from pca_jax import speedbench

flags.DEFINE_string("check_out", "", "folder for device_check.json and device_check.md")
flags.DEFINE_bool("tiny", False, "toy sizes for every measurement (the CI test, on a CPU)")
flags.DEFINE_float("budget_s", 420.0, "skip the sections left once this many seconds are spent")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes of every measurement: the real ones, or toys for --tiny."""
  train_size: int = 224
  width: int = 64
  batches: tuple[int, ...] = (256, 512)
  score_batch: int = 512
  steps: int = 20
  warmup: int = 3
  stage_size: int = 112
  stage_width: int = 64
  stage_batch: int = 256
  photos: int = 2000
  pipeline_sizes: tuple[int, ...] = (224, 112)
  pipeline_batch: int = 256


TINY = Sizes(train_size=32, width=8, batches=(16, 32), score_batch=32, steps=3, warmup=1,
             stage_size=16, stage_width=4, stage_batch=32, photos=64, pipeline_sizes=(32, 16),
             pipeline_batch=16)


def _opts(**kw) -> types.SimpleNamespace:
  """speedbench's options (its flags) for one measurement."""
  base = dict(batch=64, size=32, width=64, model="resnet18", stem="", dtype="float32", steps=20,
              warmup=3, rounds=1, n_images=2000, data_dir="", prefetch_mb=1024.0, threads=8,
              consume_ms=0.0, models=4, epochs=1, together=True, host_cores=16,
              device_img_per_s=15000.0, imagenet_epochs=10)
  return types.SimpleNamespace(**{**base, **kw})


def _memory() -> dict:
  """Device memory in use and the process's peak so far (bytes; None where the device reports
  none, e.g. a CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return {"bytes_in_use": stats.get("bytes_in_use"), "peak_bytes_in_use":
          stats.get("peak_bytes_in_use")}


def measure_train(s: Sizes) -> list[dict]:
  """The train step per precision and batch: img/s, compile seconds, memory."""
  import jax
  rows = []
  for dtype in ("bfloat16", "float32"):
    for batch in s.batches:
      opts = _opts(batch=batch, size=s.train_size, width=s.width, dtype=dtype, steps=s.steps,
                   warmup=s.warmup)
      one, stem = speedbench._train_step_fn(opts)
      t = time.perf_counter()
      jax.block_until_ready(one())
      first = time.perf_counter() - t
      rates = speedbench._rates(one, batch, s.steps, s.warmup)
      rows.append({"dtype": dtype, "batch": batch, "size": s.train_size, "width": s.width,
                   "stem": stem, "img_per_s": rates["img_per_s"], "step_ms": rates["step_ms"],
                   "compile_s": max(0.0, first - rates["step_ms"] / 1000), **_memory()})
      del one
  return rows


def measure_score(s: Sizes) -> list[dict]:
  """The EL2N forward pass per precision."""
  rows = []
  for dtype in ("float32", "bfloat16"):
    opts = _opts(batch=s.score_batch, size=s.train_size, width=s.width, dtype=dtype,
                 steps=s.steps, warmup=s.warmup)
    r = speedbench.bench_score(opts)
    rows.append({"dtype": dtype, "batch": s.score_batch, "size": s.train_size,
                 "img_per_s": r["img_per_s"], **_memory()})
  return rows


def measure_score_stage(s: Sizes, device_img_per_s: float) -> dict:
  """The score stage, K = 4 together and one after another: wall times and their ratio."""
  cores = os.cpu_count() or 1
  out = {}
  for together in (True, False):
    opts = _opts(batch=s.stage_batch, size=s.stage_size, width=s.stage_width, models=4,
                 together=together, epochs=1, n_images=s.photos, threads=cores,
                 host_cores=cores, device_img_per_s=device_img_per_s)
    r = speedbench.bench_score_stage(opts)
    out["together" if together else "separate"] = {
        k: r[k] for k in ("stage_wall_s", "train_wall_s", "score_wall_s", "images_decoded",
                          "model_img_per_s_training")}
  out["separate_over_together"] = (out["separate"]["stage_wall_s"] /
                                   out["together"]["stage_wall_s"])
  out["target"] = 1.5
  out.update(models=4, size=s.stage_size, width=s.stage_width, photos=s.photos)
  return out


def measure_pipeline(s: Sizes) -> list[dict]:
  """Grain on photo JPEGs, one reader thread per host core, per size."""
  cores = os.cpu_count() or 1
  rows = []
  for size in s.pipeline_sizes:
    r = speedbench.bench_pipeline(_opts(batch=s.pipeline_batch, size=size, n_images=s.photos,
                                        threads=cores))
    rows.append({"size": size, "threads": r["threads"], "img_per_s": r["img_per_s"],
                 "img_per_s_per_core": r["img_per_s_per_core"],
                 "bare_loop_img_per_s": r["bare_loop_img_per_s"], "cpus": r["cpus"]})
  return rows


def _config(name: str):
  """configs/<name>.py's config from the checkout this package sits in."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      f"{name}.py")
  if not os.path.isfile(path):
    raise ValueError(f"{path} is missing: run the device check from a checkout of pca_jax")
  spec = importlib.util.spec_from_file_location(f"pca_jax_device_check_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def projections(results: dict, s: Sizes) -> dict:
  """The wall time of ipc50 and benchmark_imagenet at the measured rates, each converted to
  ResNet-18-at-224-px equivalents (projection.model_factor of the measured size and width)."""
  from pca_jax.projection import Rates, model_factor, project, plan_markdown
  from pca_jax.rehearsal import KNOWN_SHAPES, spread_counts
  from pca_jax.projection import Shape
  model = types.SimpleNamespace(name="resnet18", width=s.width)
  factor = model_factor(model, s.train_size)
  train = {(r["dtype"], r["batch"]): r["img_per_s"] * factor for r in results["train"]}
  forward = {r["dtype"]: r["img_per_s"] * factor for r in results["score"]}
  pipe = results["pipeline"][0]
  classes, smallest, largest, total, per_class = KNOWN_SHAPES["imagenet2012"]
  shape = Shape("tfds:imagenet2012", tuple(spread_counts(classes, smallest, largest, total)),
                classes * per_class)
  out = {}
  for name in ("ipc50", "benchmark_imagenet"):
    config = _config(name)
    rates = Rates(train_img_per_s=train[(config.model.dtype, s.batches[0])],
                  forward_img_per_s=forward[config.model.dtype],
                  decode_img_per_s_per_core=pipe["img_per_s_per_core"],
                  host_cores=pipe["cpus"])
    plan = project(config, shape, rates)
    out[name] = {"wall_s": plan["total"]["wall_s"], "device_s": plan["total"]["device_s"],
                 "host_s": plan["total"]["host_s"], "rates": plan["rates"],
                 "markdown": plan_markdown(plan, f"configs/{name}.py on this machine")}
  return out


def markdown(results: dict) -> str:
  """device_check.md: one table per section."""
  d = results["device"]
  gib = lambda b: "n/a" if b is None else f"{b / 2 ** 30:.1f} GiB"  # noqa: E731
  lines = [f"# Device check: {d['kind']} ({d['platform']}, {d['count']} device(s)), "
           f"{results['host']['cpus']} host cores{' [tiny]' if results['tiny'] else ''}", "",
           f"jax {d['jax']}; {results['wall_s']:.0f} s in all.", ""]
  if "train" in results:
    lines += ["## Train step (ResNet-18, in-memory set, patch crops)", "",
              "| dtype | batch | size | img/s | step ms | compile s | in use | peak so far |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['batch']} | {r['size']} | {r['img_per_s']:.0f} | "
              f"{r['step_ms']:.1f} | {r['compile_s']:.1f} | {gib(r['bytes_in_use'])} | "
              f"{gib(r['peak_bytes_in_use'])} |" for r in results["train"]] + [""]
  if "score" in results:
    lines += ["## EL2N forward", "", "| dtype | batch | img/s |", "|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['batch']} | {r['img_per_s']:.0f} |"
              for r in results["score"]] + [""]
  if "score_stage" in results:
    st = results["score_stage"]
    lines += ["## Score stage, K = 4", "", "| mode | stage s | train s | score s | decoded |",
              "|---|---|---|---|---|"]
    lines += [f"| {m} | {st[m]['stage_wall_s']:.1f} | {st[m]['train_wall_s']:.1f} | "
              f"{st[m]['score_wall_s']:.1f} | {st[m]['images_decoded']} |"
              for m in ("together", "separate")]
    lines += ["", f"One after another / together: **{st['separate_over_together']:.2f}x** "
              f"(target >= {st['target']}).", ""]
  if "pipeline" in results:
    lines += ["## Grain pipeline on photo JPEGs", "", "| size | threads | img/s | per core |",
              "|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['threads']} | {r['img_per_s']:.0f} | "
              f"{r['img_per_s_per_core']:.0f} |" for r in results["pipeline"]] + [""]
  for name, p in results.get("projection", {}).items():
    lines += [p["markdown"]]
  if results["skipped"]:
    lines += ["Skipped (budget spent, or a section they need failed): "
              + ", ".join(results["skipped"])]
  for name, error in results.get("errors", {}).items():
    lines += [f"Failed: {name}: {error}"]
  return "\n".join(lines) + "\n"


def run_check(out_dir: str, tiny: bool, budget_s: float) -> dict:
  """Every section within the budget; writes the JSON and the Markdown; returns the results."""
  import jax
  s = TINY if tiny else Sizes()
  t0 = time.perf_counter()
  results = {"tiny": tiny, "host": speedbench.host_info(), "skipped": [], "errors": {},
             "sections_s": {},
             "device": {"kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
                        "count": jax.device_count(), "jax": jax.__version__}}
  sections = [("train", lambda: measure_train(s)), ("score", lambda: measure_score(s)),
              ("pipeline", lambda: measure_pipeline(s)),
              ("score_stage", lambda: measure_score_stage(
                  s, statistics.median(r["img_per_s"] for r in results["train"]))),
              ("projection", lambda: projections(results, s))]
  needs = {"score_stage": ("train",), "projection": ("train", "score", "pipeline")}
  for name, fn in sections:
    if time.perf_counter() - t0 > budget_s or any(n not in results for n in needs.get(name, ())):
      results["skipped"].append(name)
      continue
    t = time.perf_counter()
    print(f"[device_check] {name} ...", flush=True)
    try:
      results[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' numbers
      results["errors"][name] = f"{type(e).__name__}: {e}"
      print(f"[device_check] {name} FAILED: {results['errors'][name]}", flush=True)
    results["sections_s"][name] = time.perf_counter() - t
    print(f"[device_check] {name}: {results['sections_s'][name]:.1f} s", flush=True)
    _save(out_dir, results, t0)  # after every section: the minutes of a lent GPU are not lost
  _save(out_dir, results, t0)
  return results


def _save(out_dir: str, results: dict, t0: float) -> None:
  from pca_jax import fs
  results["wall_s"] = time.perf_counter() - t0
  fs.save_json(os.path.join(out_dir, "device_check.json"), results)
  fs.save_text(os.path.join(out_dir, "device_check.md"), markdown(results))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.check_out:
    print("error: --check_out=DIR is required (where device_check.json and .md go)",
          file=sys.stderr)
    sys.exit(2)
  results = run_check(FLAGS.check_out, FLAGS.tiny, FLAGS.budget_s)
  print(markdown(results), flush=True)
  if results["errors"]:  # the other sections' numbers are written; the run still failed
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
