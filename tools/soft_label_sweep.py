"""Soft vs hard labels on a benchmark run's sets, over the schedule length, the temperature and
CutMix (issue 27): where does a teacher's soft labels start to beat hard labels for random images,
and does distillation (sre2l) then fall below random, as the paper finds on ImageNet?

It reads the sets and the teacher of a finished benchmark run (benchmark/sets/, teacher/) and
trains each set with the benchmark cells' own trainer config (pca_jax.dc.stages
.cell_trainer_config: same student, optimizer, crops, seeds), varying only
  - the label mode and the number of epochs (--epochs, hard and soft at each);
  - at --ablation_epochs, soft labels with the temperatures of --temperatures and without CutMix.
Results go to OUT/results.jsonl (one line per cell; a rerun skips cells already there), OUT/sweep.md
(tables, mean +- std over the seeds) and OUT/sweep.png. Not a CI test: it is a measurement.

  python -m pca_jax.main --config=configs/benchmark_demo.py --workdir=runs/soft \\
      --config.benchmark.methods=random,el2n_easy,sre2l,noise --config.benchmark.ipcs=1,10 \\
      --config.score.forgetting=False --config.score.aum=False
  python tools/soft_label_sweep.py --workdir=runs/soft \
      --skip='sre2l-ipc10-*-e1000*,noise-ipc10-*-e1000*'      # docs/soft_labels.md: ~2 h here

--batch_to_set (default on): a set smaller than train.batch_size trains in batches of its size (as
the reference's DataLoader does) instead of padded batches with weight-0 filler: the same loss and
BatchNorm statistics (the filler is masked out of both), one tenth of the compute at IPC 1.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def variants(epochs: list[int], ablation_epochs: int, temperatures: list[float],
             temperature: float) -> list[dict]:
  """The sweep's training variants: hard and soft at every length; at ablation_epochs, soft at
  the other temperatures and soft without CutMix."""
  out = []
  for e in epochs:
    out.append(dict(label="hard", epochs=e, temperature=temperature, cutmix=1.0))
    out.append(dict(label="soft", epochs=e, temperature=temperature, cutmix=1.0))
  for t in temperatures:
    if t != temperature:
      out.append(dict(label="soft", epochs=ablation_epochs, temperature=t, cutmix=1.0))
  out.append(dict(label="soft", epochs=ablation_epochs, temperature=temperature, cutmix=0.0))
  return out


def variant_name(v: dict) -> str:
  if v["label"] == "hard":
    return f"hard-e{v['epochs']}"
  cm = "" if v["cutmix"] else "-nocutmix"
  return f"soft-e{v['epochs']}-T{v['temperature']:g}{cm}"


def cell_id(method: str, ipc: int, seed: int, v: dict) -> str:
  return f"{method}-ipc{ipc}-s{seed}-{variant_name(v)}"


def set_dir_name(method: str, ipc: int, seed: int, names: set[str]) -> str:
  """benchmark/sets/<name> of a method's set at ipc (seeded sets have -s<seed>)."""
  for name in (f"{method}-ipc{ipc}-g1x1-s{seed}", f"{method}-ipc{ipc}-g1x1"):
    if name in names:
      return name
  raise ValueError(f"the run has no set of {method} at IPC {ipc} (seed {seed}); run the "
                   f"benchmark with --config.benchmark.methods including {method} and "
                   f"--config.benchmark.ipcs including {ipc}")


def mean_std(values: list[float]) -> str:
  if not values:
    return "—"
  a = np.asarray(values, float)
  return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a[0]:.1f}"


def render(rows: list[dict], v_list: list[dict], methods: list[str], ipcs: list[int],
           epochs: list[int], ablation_epochs: int, temperature: float, command: str) -> str:
  """sweep.md: the schedule table and the temperature / CutMix table, mean ± sample std over seeds."""
  def cell(method, ipc, v):
    return mean_std([r["top1"] for r in rows if r["method"] == method and r["ipc"] == ipc
                     and r["variant"] == variant_name(v)])
  lines = ["# Soft vs hard labels over the schedule, T and CutMix", "",
           f"Made by `{command}`. Final top-1 % on the test split, mean ± sample std over seeds.", "",
           f"## Schedule (soft: T = {temperature:g}, CutMix on)", ""]
  head = [f"{lab} {e}" for e in epochs for lab in ("hard", "soft")]
  lines += ["| method | IPC | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
  for ipc in ipcs:
    for m in methods:
      vals = [cell(m, ipc, dict(label=lab, epochs=e, temperature=temperature, cutmix=1.0))
              for e in epochs for lab in ("hard", "soft")]
      lines.append(f"| {m} | {ipc} | " + " | ".join(vals) + " |")
  abl = [v for v in v_list if v["epochs"] == ablation_epochs]
  abl.sort(key=lambda v: (v["label"] != "hard", -v["cutmix"], v["temperature"]))
  head = [variant_name(v).replace(f"-e{ablation_epochs}", "") for v in abl]
  lines += ["", f"## Temperature and CutMix at {ablation_epochs} epochs", "",
            "| method | IPC | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
  for ipc in ipcs:
    for m in methods:
      lines.append(f"| {m} | {ipc} | " + " | ".join(cell(m, ipc, v) for v in abl) + " |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], ipcs: list[int], epochs: list[int],
         temperature: float, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(ipcs), figsize=(5 * len(ipcs), 3.8), squeeze=False)
  for ax, ipc in zip(axes[0], ipcs):
    for i, m in enumerate(methods):
      for lab, style in (("hard", "--"), ("soft", "-")):
        xs, ys, es = [], [], []
        for e in epochs:
          name = variant_name(dict(label=lab, epochs=e, temperature=temperature, cutmix=1.0))
          vals = [r["top1"] for r in rows
                  if r["method"] == m and r["ipc"] == ipc and r["variant"] == name]
          if vals:
            xs.append(e), ys.append(np.mean(vals)), es.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        if xs:
          ax.errorbar(xs, ys, yerr=es, linestyle=style, marker="o", color=f"C{i}",
                      label=f"{m} {lab}", capsize=2)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.set_xlabel("epochs")
    ax.set_ylabel("test top-1 %")
    ax.set_title(f"IPC {ipc} (soft: T = {temperature:g}, CutMix)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, ncol=3, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a finished benchmark run (sets + teacher)")
  p.add_argument("--out", default="", help="default: WORKDIR/soft_sweep")
  p.add_argument("--methods", default="random,sre2l,noise")
  p.add_argument("--ipcs", default="1,10")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--epochs", default="100,300,1000")
  p.add_argument("--ablation_epochs", type=int, default=100)
  p.add_argument("--temperatures", default="1,4,20")
  p.add_argument("--batch_to_set", type=int, default=1)
  p.add_argument("--skip", default="",
                 help="comma-separated fnmatch patterns of cell ids not to train, e.g. "
                      "'sre2l-ipc10-*-e1000*' (their table cells stay empty)")
  p.add_argument("--render_only", action="store_true")
  a = p.parse_args(argv)
  import ml_collections

  from pca_jax import fs
  from pca_jax.config import use_compile_cache
  from pca_jax.data.store import load_compressed
  from pca_jax.dc.methods import METHODS
  from pca_jax.dc.stages import cell_fingerprint, cell_trainer_config, load_teacher
  from pca_jax.pca.context import Run
  from pca_jax.training import InMemoryData, train

  out = a.out or os.path.join(a.workdir, "soft_sweep")
  cfg_path = os.path.join(a.workdir, "config.json")
  if not os.path.isfile(cfg_path) or not os.path.isdir(os.path.join(a.workdir, "benchmark",
                                                                      "sets")):
    raise ValueError(f"{a.workdir} is not a finished benchmark run (no config.json or "
                     "benchmark/sets/); run the benchmark first (see this script's docstring)")
  config = ml_collections.ConfigDict(json.load(open(cfg_path)))
  use_compile_cache(config)  # every cell of the same shapes compiles once
  methods = [m for m in a.methods.split(",") if m]
  ipcs = [int(x) for x in a.ipcs.split(",")]
  seeds = [int(x) for x in a.seeds.split(",")]
  epochs = [int(x) for x in a.epochs.split(",")]
  temperature = float(config.train.temperature)
  v_list = variants(epochs, a.ablation_epochs, [float(t) for t in a.temperatures.split(",")],
                    temperature)
  command = "python tools/soft_label_sweep.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
  run = Run(config, a.workdir, log=lambda s: None)
  names = {d.name for d in run.path("benchmark", "sets").iterdir()}
  # the teacher stage's id, as the benchmark's cell fingerprints carry it (soft cells)
  teacher_marker = fs.read_json(run.path("stages", "teacher.json"))
  plan = {}  # cell id -> (ipc, variant, method, seed, set name, trainer config, fingerprint)
  for v in v_list:
    for ipc in ipcs:
      for m in methods:
        for s in seeds:
          name = set_dir_name(m, ipc, s, names)
          manifest = fs.read_json(run.path("benchmark", "sets", name, "manifest.json"))
          cell = {"method": m, "ipc": ipc, "grid": (1, 1), "label": v["label"], "seed": s}
          mc = cell_trainer_config(run, cell, METHODS[m].crop)
          mc.train.update(dict(epochs=v["epochs"], temperature=v["temperature"],
                               cutmix_alpha=v["cutmix"], eval_every_epochs=0,
                               log_every_steps=10 ** 9, checkpoint_every_steps=10 ** 9))
          if a.batch_to_set:
            mc.train.batch_size = min(int(mc.train.batch_size), int(manifest["num_images"]))
          fp = cell_fingerprint(run, teacher_marker, manifest["fingerprint"], mc, v["label"])
          plan[cell_id(m, ipc, s, v)] = (ipc, v, m, s, name, mc, fp)
  # rows of this plan made under the same set, teacher and trainer config; others are ignored
  os.makedirs(out, exist_ok=True)  # the inputs are checked: now write
  results = os.path.join(out, "results.jsonl")
  rows = [json.loads(line) for line in open(results)] if os.path.exists(results) else []
  rows = [r for r in rows if r["id"] in plan and r.get("fingerprint") == plan[r["id"]][-1]]
  done = {r["id"] for r in rows}
  if not a.render_only:
    teacher = load_teacher(run)
    num_classes = run.train_source.num_classes
    skip = [pattern for pattern in a.skip.split(",") if pattern]
    # shortest schedules first, then the smaller IPC: a partial sweep already has whole columns
    todo = sorted((t for cid, t in plan.items() if cid not in done
                   and not any(fnmatch.fnmatch(cid, pattern) for pattern in skip)),
                  key=lambda t: (t[1]["epochs"], t[0]))
    t0, steps_done = time.time(), 0
    total_steps = sum(t[1]["epochs"] for t in todo)
    print(f"[sweep] {len(todo)} cells to train ({len(done)} done), {total_steps} epochs in all",
          flush=True)
    for i, (ipc, v, m, s, name, mc, fp) in enumerate(todo):
      cid = cell_id(m, ipc, s, v)
      cs = load_compressed(run.path("benchmark", "sets", name))
      c0 = time.time()
      _, metrics = train(mc, os.path.join(out, "runs", cid),
                         InMemoryData(cs.images, cs.labels, num_classes), run.eval_source,
                         desc=cid, log=lambda s: None,
                         teacher=teacher if v["label"] == "soft" else None, save_final=False)
      row = {"id": cid, "method": m, "ipc": ipc, "seed": s, "variant": variant_name(v), **v,
             "batch_size": int(mc.train.batch_size), "steps": int(metrics["steps"]),
             "top1": float(metrics["eval_top1"]), "top5": float(metrics["eval_top5"]),
             "wall_s": round(time.time() - c0, 1), "fingerprint": fp}
      with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
      rows.append(row)
      steps_done += v["epochs"]
      rate = (time.time() - t0) / steps_done
      print(f"[sweep {i + 1}/{len(todo)}] {cid}: top-1 {row['top1']:.1f} % "
            f"({row['wall_s']:.0f} s; eta {(total_steps - steps_done) * rate / 60:.0f} min)",
            flush=True)
      fs.save_text(os.path.join(out, "sweep.md"),
                   render(rows, v_list, methods, ipcs, epochs, a.ablation_epochs, temperature,
                          command))
  fs.save_text(os.path.join(out, "sweep.md"),
               render(rows, v_list, methods, ipcs, epochs, a.ablation_epochs, temperature,
                      command))
  plot(rows, methods, ipcs, epochs, temperature, os.path.join(out, "sweep.png"))
  print(f"[sweep] {out}/sweep.md, {out}/sweep.png", flush=True)


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:  # bad input: one line saying what to fix, exit 2 (as pca_jax.main)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
