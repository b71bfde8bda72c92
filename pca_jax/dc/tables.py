"""The DC benchmark's outputs: rows aggregated over seeds, Markdown tables, CSV and the plot.

Accuracies in rows and tables are test top-1 in percent: `top1` after the last epoch, `top1_best`
the highest of the periodic evaluations (benchmark.eval_every_epochs) and the final one. The
reference CLI (rethinkdc 0.3.2, train_KD.py) prints the top-1 of each of its evaluations (epoch 0,
every 50th, the last) and reports no best: its last printed number is `top1`; `top1_best` is
pca_jax's own summary of the same evaluations (chosen on the test split, so optimistic). The
DD-Ranking scores (Li et al. 2025) are computed from fractions and stored in percent: `ior` and
`hlr` in percentage points, `lrs` in percent of its [0, 1] range.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

from pca_jax.dc.plan import LABEL_MODES

# The top-1 the DD-Ranking scores use: final, as the teacher's full-data accuracy they compare
# against is final too, and a max over test evaluations would select on the test split.
DD_RANKING_ACCURACY = "top1"


def soft_label_bytes(num_images: int, epochs: int, num_classes: int, bytes_per_value: int) -> int:
  """Storage of soft labels kept per augmented view: one view per image per epoch."""
  return int(num_images) * int(epochs) * int(num_classes) * int(bytes_per_value)


# ------------------------------------------------------------------------------- best vs final
def periodic_evals(metrics_jsonl: str, before_step: int) -> list[dict]:
  """The evaluation rows ({"step", "epoch", "eval_top1", ...}) of a metrics.jsonl text whose step
  is below `before_step` (the final evaluation, which the caller has from train's metrics, is
  left out so that a run resumed at its last step does not count it twice)."""
  rows = [json.loads(line) for line in metrics_jsonl.splitlines() if line.strip()]
  return [r for r in rows if "eval_top1" in r and r.get("step", 0) < before_step]


def best_top1(evals: list[dict]) -> tuple[float | None, float | None]:
  """(highest eval_top1, the epoch it was first reached) over evaluations in training order,
  [{"epoch", "eval_top1"}]; (None, None) when there are none. Ties keep the earliest epoch."""
  best, epoch = None, None
  for e in evals:
    if best is None or e["eval_top1"] > best:
      best, epoch = float(e["eval_top1"]), e["epoch"]
  return best, epoch


# ----------------------------------------------------------------------------------- DD-Ranking
def ior(acc: float, acc_random: float) -> float:
  """Improvement over random: acc - acc_random (fractions; a difference, so percent in gives
  points out), both at the same IPC, label mode and seed; > 0 when the method's images teach more
  than as many random real images."""
  return acc - acc_random


def hlr(acc_full: float, acc: float) -> float:
  """Hard-label recovery: acc_full - acc (fractions, or percent as for ior), the gap to training
  on the full train set; 0 = all of the full data's accuracy is recovered."""
  return acc_full - acc


def lrs(ior_value: float, hlr_value: float, weight: float = 0.5) -> float:
  """Label-robust score: (exp(a) - exp(-1)) / (exp(1) - exp(-1)), a = weight * IOR -
  (1 - weight) * HLR with IOR and HLR as fractions: a in [-1, 1] maps onto a score in [0, 1]."""
  a = weight * ior_value - (1.0 - weight) * hlr_value
  return (math.exp(a) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


def dd_ranking_scores(top1: float | None, random_top1: float | None,
                      full_top1: float | None, hard_top1: float | None) -> dict:
  """{"ior", "hlr", "lrs"} of one row from top-1 in percent: the method's in this label mode, its
  random partner's (same label mode), the full data's, and the same method's with HARD labels
  (DD-Ranking's hard-label recovery: for a hard row its own top-1, for a soft row its hard
  partner's). IOR and HLR in percentage points (differences: the same on percent as 100x on
  fractions), LRS in percent of fractions' score. A score whose input is missing (no random row,
  no hard row, no full-data accuracy) is None."""
  out = {"ior": None, "hlr": None, "lrs": None}
  if top1 is None:
    return out
  if random_top1 is not None:
    out["ior"] = ior(top1, random_top1)
  if full_top1 is not None and hard_top1 is not None:
    out["hlr"] = hlr(full_top1, hard_top1)
  if out["ior"] is not None and out["hlr"] is not None:
    out["lrs"] = 100.0 * lrs(out["ior"] / 100.0, out["hlr"] / 100.0)
  return out


def _random_key(r: dict) -> tuple:
  return int(r["ipc"]), r["label"], int(r["seed"]), r.get("student", "")


def with_dd_ranking(rows: list[dict], full_top1: float | None,
                    key: str = DD_RANKING_ACCURACY) -> list[dict]:
  """Copies of the rows with "ior", "hlr", "lrs" (see dd_ranking_scores) from their `key` top-1.
  A row's random partner is the `random` row (whole images, full resolution) with the same IPC,
  label mode, seed and student: the same number of real images, labels and student
  initialisation. Its hard partner (for HLR) is the same method, grid, IPC, seed, resolution and
  student with hard labels."""
  randoms = {_random_key(r): r.get(key) for r in rows
             if r["method"] == "random" and tuple(r["grid"]) == (1, 1)
             and r.get("resolution", "full") == "full"}
  hards = {_hard_key(r): r.get(key) for r in rows if r["label"] == "hard"}
  return [{**r, **dd_ranking_scores(r.get(key), randoms.get(_random_key(r)), full_top1,
                                    hards.get(_hard_key(r)))}
          for r in rows]


def _hard_key(r: dict) -> tuple:
  return (r["method"], tuple(r["grid"]), int(r["ipc"]), int(r["seed"]),
          r.get("resolution", "full"), r.get("student", ""))


# ---------------------------------------------------------------------------------- aggregation
def _mean_std(values: list) -> tuple[float | None, float | None]:
  """(mean, sample std) of the values that are not None; std 0 for one value; (None, None) if
  none (e.g. rows cached before a score existed, or without a random partner)."""
  vals = np.array([v for v in values if v is not None], float)
  if not len(vals):
    return None, None
  return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and sample std over seeds per (method, grid, ipc, label, resolution, student) of top-1
  (final), top1_best and, where the rows carry them, the DD-Ranking scores ior / hlr / lrs.
  Groups come in order of the first row of each (the plan's order: students as listed)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    key = (r["method"], tuple(r["grid"]), int(r["ipc"]), r["label"], r.get("resolution", "full"),
           r.get("student", ""))
    groups.setdefault(key, []).append(r)
  out = []
  for (method, grid, ipc, label, res, student), rs in sorted(
      groups.items(), key=lambda kv: (kv[0][:5], list(groups).index(kv[0]))):
    acc = np.array([r["top1"] for r in rs], float)
    a = {"method": method, "grid": grid, "ipc": ipc, "label": label, "resolution": res,
         "student": student,
         "n": len(rs), "train_img_per_s": float(np.mean(
             [r.get("train_img_per_s") or 0.0 for r in rs])),
         "train_wall_s": float(np.mean([r.get("train_wall_s") or 0.0 for r in rs])),
         "top1_mean": float(acc.mean()), "top1_std": float(acc.std(ddof=1)) if len(rs) > 1
         else 0.0, "bytes_images": rs[0]["bytes_images"],
         "bytes_soft_labels": rs[0]["bytes_soft_labels"],
         "stored_images": rs[0]["stored_images"]}
    best = [r.get("top1_best") for r in rs]
    a["top1_best_mean"], a["top1_best_std"] = _mean_std(best)
    a["top1_best_n"] = sum(b is not None for b in best)
    a["top1_best_epochs"] = [r.get("top1_best_epoch") for r in rs]
    for score in ("ior", "hlr", "lrs"):
      a[f"{score}_mean"], a[f"{score}_std"] = _mean_std([r.get(score) for r in rs])
    out.append(a)
  return out


def _name(method: str, grid, resolution: str = "full") -> str:
  name = f"{method} {grid[0]}x{grid[1]}" if method == "pca" else method
  return name if resolution == "full" else f"{name} @{resolution}-res"


def _human(nbytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if nbytes < 1000 or unit == "TB":
      return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
    nbytes /= 1000.0
  return ""


def _method_grid(agg: list[dict], cell, title: str) -> list[str]:
  """A Markdown table with a row per method (and grid, resolution) in order of appearance and a
  column per IPC x label mode; cell(aggregate row) -> its text ("" where a cell has no row)."""
  ipcs = sorted({a["ipc"] for a in agg})
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  by = {(_name(a["method"], a["grid"], a.get("resolution", "full")), a["ipc"], a["label"]): a
        for a in agg}
  names = []
  for a in agg:
    n = _name(a["method"], a["grid"], a.get("resolution", "full"))
    if n not in names:
      names.append(n)
  head = ["method"] + [f"IPC{i} {l}" for i in ipcs for l in labels]
  lines = [f"## {title}" if title else "", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    cells = [cell(by[(n, i, l)]) if (n, i, l) in by else "" for i in ipcs for l in labels]
    lines.append("| " + " | ".join([n] + cells) + " |")
  return lines


def _mean_pm_std(mean: float | None, std: float | None, n: int) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def markdown_table(agg: list[dict], title: str = "") -> str:
  """Paper-style table of the final top-1: a row per method (and grid), columns IPC x label
  mode, plus the storage table."""
  lines = _method_grid(agg, lambda a: _mean_pm_std(a["top1_mean"], a["top1_std"], a["n"]), title)
  ipcs = sorted({a["ipc"] for a in agg})
  lines += ["", "Storage per method at each IPC (images as uint8 arrays; soft labels as fp16, "
            "one per view per epoch):", "",
            "| IPC | stored images | image bytes | soft-label bytes | soft / images |",
            "|---|---|---|---|---|"]
  for i in ipcs:
    a = next((x for x in agg if x["ipc"] == i and not x["method"].startswith("external")), None)
    if a:
      ratio = a["bytes_soft_labels"] / max(a["bytes_images"], 1)
      lines.append(f"| {i} | {a['stored_images']} | {_human(a['bytes_images'])} | "
                   f"{_human(a['bytes_soft_labels'])} | {ratio:.1f}x |")
  return "\n".join(lines) + "\n"


def best_table(agg: list[dict], eval_every_epochs: int) -> str:
  """The best top-1 over the periodic evaluations (every eval_every_epochs) and the final one
  (the reference CLI prints every evaluation and reports none as best; this is pca_jax's
  summary of them); with one seed the epoch of the best follows.
  Empty without periodic evaluations (best = final then). "n/a": rows cached without it."""
  if not eval_every_epochs or not agg:
    return ""

  def cell(a: dict) -> str:
    text = _mean_pm_std(a.get("top1_best_mean"), a.get("top1_best_std"), a.get("top1_best_n", 0))
    epochs = a.get("top1_best_epochs") or []
    if len(epochs) == 1 and epochs[0] is not None:
      text += f" (ep {epochs[0]:g})"
    return text
  lines = _method_grid(agg, cell, "Best test top-1 %")
  lines[1:1] = ["", f"The highest of the evaluations every {eval_every_epochs} epochs and the "
                "final one (chosen on the test split, so optimistic next to the final top-1 above; "
                "the reference CLI prints each evaluation's top-1, epoch 0, every 50th and the "
                "last, and reports no best: its last number is the final top-1)."]
  return "\n".join(lines) + "\n"


def _signed(v: float | None, sign: bool = False) -> str:
  return "n/a" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")


def dd_ranking_table(agg: list[dict], full_top1: float | None, why_no_full: str = "",
                     key: str = DD_RANKING_ACCURACY) -> str:
  """DD-Ranking scores per method x IPC x label mode (means over seeds): "IOR / HLR / LRS", with
  the full-data accuracy they compare against, or why it is missing (HLR, LRS then n/a)."""
  if not agg:
    return ""
  which = "final" if key == "top1" else "best"
  full = (f"full data (teacher): {full_top1:.1f} % (test top-1 of the benchmark's teacher, "
          "trained on the full train split)" if full_top1 is not None else
          f"full data (teacher): n/a ({why_no_full or 'unknown'}): HLR and LRS are n/a")

  def cell(a: dict) -> str:
    return " / ".join([_signed(a.get("ior_mean"), True), _signed(a.get("hlr_mean")),
                       _signed(a.get("lrs_mean"))])
  lines = _method_grid(agg, cell, f"DD-Ranking scores (Li et al. 2025) from the {which} top-1")
  lines[1:1] = ["", full, "",
                "Each cell: IOR / HLR / LRS, means over seeds (std per score in benchmark.json). "
                "IOR = acc - acc(random: same IPC, label mode and seed), HLR = acc(full data) - "
                "acc(the same set with hard labels), both in percentage points; LRS = (e^a - e^-1) / (e - e^-1) in %, a = "
                "0.5 IOR - 0.5 HLR with accuracies as fractions. Higher IOR and LRS, lower HLR "
                "are better."]
  if any(a.get("ior_mean") is None for a in agg):
    lines += ["", "IOR n/a: no `random` row at the same IPC, label mode and seed (add random to "
              "benchmark.methods)."]
  return "\n".join(lines) + "\n"


def grid_table(agg: list[dict]) -> str:
  """PCA top-1 vs grid at equal bytes, per IPC and label mode."""
  pca = [a for a in agg if a["method"] == "pca" and a.get("resolution", "full") == "full"]
  if not pca:
    return ""
  grids = sorted({a["grid"] for a in pca})
  lines = ["## PCA grid sweep (equal bytes: a rows x cols mosaic stores rows*cols images)", "",
           "| IPC | labels | " + " | ".join(f"{g[0]}x{g[1]}" for g in grids) + " |",
           "|---|---|" + "---|" * len(grids)]
  for i in sorted({a["ipc"] for a in pca}):
    for l in LABEL_MODES:
      row = {a["grid"]: a for a in pca if a["ipc"] == i and a["label"] == l}
      if row:
        lines.append(f"| {i} | {l} | " + " | ".join(
            f"{row[g]['top1_mean']:.1f}" if g in row else "n/a" for g in grids) + " |")
  return "\n".join(lines) + "\n"


def resolution_table(agg: list[dict]) -> str:
  """Full vs patch (vs blur) resolution per mosaic method: top-1, train throughput, wall time."""
  res = [a for a in agg if a.get("resolution", "full") != "full"]
  if not res:
    return ""
  lines = ["## Resolution: train/eval at full size vs at the patch size (equal bytes)", "",
           "| method | IPC | labels | resolution | top-1 % | train img/s | train wall s |",
           "|---|---|---|---|---|---|---|"]
  keys = sorted({(a["method"], a["grid"], a["ipc"], a["label"]) for a in res})
  for m, g, i, l in keys:
    for a in agg:
      if (a["method"], a["grid"], a["ipc"], a["label"]) == (m, g, i, l):
        lines.append(f"| {_name(m, g)} | {i} | {l} | {a.get('resolution', 'full')} | "
                     f"{a['top1_mean']:.1f} | {a['train_img_per_s']:.0f} | "
                     f"{a['train_wall_s']:.1f} |")
  return "\n".join(lines) + "\n"


def search_table(rows: list[dict]) -> str:
  """pca_auto's choices: per IPC, seed and label mode the settings its search chose on the
  validation split, their val top-1, the search's wall time and the test top-1 of the cell."""
  auto = sorted((r for r in rows if r.get("chosen")),
                key=lambda r: (r["method"], r["ipc"], r["seed"], r["label"]))
  if not auto:
    return ""
  lines = ["## Settings chosen per IPC and seed (tune search on a validation split of the train "
           "split)", "",
           "| method | IPC | seed | labels | chosen | val top-1 % | search wall s | test top-1 % |",
           "|---|---|---|---|---|---|---|---|"]
  for r in auto:
    lines.append(f"| {r['method']} | {r['ipc']} | {r['seed']} | {r['label']} | {r['chosen']} | "
                 f"{r['chosen_val_top1']:.1f} | {r['search_wall_s']:.1f} | {r['top1']:.1f} |")
  return "\n".join(lines) + "\n"


def student_table(agg: list[dict], students: list[str], teacher: str, overrides: str = "") -> str:
  """The cross-architecture table: at each IPC and label mode, a row per method and a column per
  student (final top-1, mean ± std over seeds). Soft-label columns name the teacher -> student
  pair: the teacher is one model (config.model) for every student."""
  ipcs = sorted({a["ipc"] for a in agg})
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  by = {(_name(a["method"], a["grid"], a.get("resolution", "full")), a["ipc"], a["label"],
         a["student"]): a for a in agg}
  names = []
  for a in agg:
    n = _name(a["method"], a["grid"], a.get("resolution", "full"))
    if n not in names:
      names.append(n)
  lines = ["## Cross-architecture: the same sets, other students", "",
           f"Final test top-1 %. Every set is built once and trained on by each student with the "
           f"same schedule; soft labels come from one teacher ({teacher})."
           + (f" Per-student train overrides: {overrides}." if overrides else ""), ""]
  for i in ipcs:
    for l in labels:
      head = [f"IPC {i}, {l} labels"] + [s if l == "hard" else f"{teacher} → {s}"
                                          for s in students]
      lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      for n in names:
        cells = [_mean_pm_std(by[k]["top1_mean"], by[k]["top1_std"], by[k]["n"])
                 if (k := (n, i, l, s)) in by else "" for s in students]
        if any(cells):
          lines.append("| " + " | ".join([n] + cells) + " |")
      lines.append("")
  return "\n".join(lines)


def write_csv(rows: list[dict], path) -> None:
  from pca_jax.fs import save_text
  fields = ["method", "student", "ipc", "grid", "label", "seed", "resolution", "view_size", "top1",
            "top1_best", "top1_best_epoch", "top5", "ior", "hlr", "lrs", "stored_images",
            "source_images_per_class", "bytes_images", "bytes_soft_labels", "train_wall_s",
            "train_img_per_s", "chosen", "chosen_val_top1", "search_wall_s"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  for r in sorted(rows, key=lambda r: (r["method"], tuple(r["grid"]), r["ipc"], r["label"],
                                       r["seed"], r.get("resolution", "full"),
                                       r.get("student", ""))):
    w.writerow({**r, "grid": f"{r['grid'][0]}x{r['grid'][1]}"})
  save_text(path, buf.getvalue())


def plot(agg: list[dict], path, title: str, students: list[str] | None = None) -> None:
  """benchmark.png: top-1 vs IPC per method; one panel per label mode, and a row of panels per
  student when there are several."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from pca_jax.fs import write_file
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  students = students or sorted({a.get("student", "") for a in agg})
  fig, axes = plt.subplots(len(students), len(labels),
                           figsize=(6.5 * len(labels), 4.5 * len(students)), squeeze=False,
                           sharey=True)
  for row, student in enumerate(students):
    mine = [a for a in agg if a.get("student", "") == student]
    for ax, l in zip(axes[row], labels):
      _plot_panel(ax, mine, l, f"{l} labels" + (f", student {student}" if len(students) > 1
                                                 else ""))
    axes[row][0].set_ylabel("test top-1 %")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  suptitle(fig, title)
  write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
  plt.close(fig)


def _plot_panel(ax, agg: list[dict], l: str, title: str) -> None:
  """One panel: top-1 vs IPC of every method with `l` labels in agg."""
  import matplotlib
  import matplotlib.pyplot as plt
  names = []
  for a in agg:
    n = _name(a["method"], a["grid"], a.get("resolution", "full"))
    if a["label"] == l and n not in names:
      names.append(n)
  for i, n in enumerate(names):
    pts = sorted((a["ipc"], a["top1_mean"], a["top1_std"]) for a in agg if a["label"] == l
                 and _name(a["method"], a["grid"], a.get("resolution", "full")) == n)
    x, y, e = zip(*pts)
    style = "-o" if n.startswith("pca") else "--s" if n.startswith("external") else "-."
    ax.errorbar(x, y, yerr=e, fmt=style, capsize=3, label=n, color=plt.cm.tab20(i % 20),
                lw=2 if n.startswith("pca") else 1)
  ax.set_xscale("log")
  ax.set_xticks(sorted({a["ipc"] for a in agg}))
  ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel("images per class (IPC)")
  ax.set_title(title)
  ax.grid(alpha=0.3)


def suptitle(fig, title: str):
  """The figure's title wrapped to its width (a long dataset name, e.g. an ImageFolder path,
  stays inside the figure), and the panels laid out below it; returns the title's Text."""
  import textwrap
  width_in = fig.get_size_inches()[0]
  chars = max(30, int(width_in * 72 / (11 * 0.62)))  # 11 pt characters in the figure's width
  lines = textwrap.wrap(title, chars, break_long_words=True, break_on_hyphens=False)
  text = fig.suptitle("\n".join(lines), fontsize=11)
  top = 1 - (0.2 + 0.18 * len(lines)) / fig.get_size_inches()[1]
  fig.tight_layout(rect=(0, 0, 1, top))
  return text
