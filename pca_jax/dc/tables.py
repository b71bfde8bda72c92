"""The DC benchmark's outputs: rows aggregated over seeds, Markdown tables, CSV and the plot."""

from __future__ import annotations

import csv
import io

import numpy as np

from pca_jax.dc.plan import LABEL_MODES


def soft_label_bytes(num_images: int, epochs: int, num_classes: int, bytes_per_value: int) -> int:
  """Storage of soft labels kept per augmented view: one view per image per epoch."""
  return int(num_images) * int(epochs) * int(num_classes) * int(bytes_per_value)


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and sample std of top-1 over seeds per (method, grid, ipc, label)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    key = (r["method"], tuple(r["grid"]), int(r["ipc"]), r["label"], r.get("resolution", "full"))
    groups.setdefault(key, []).append(r)
  out = []
  for (method, grid, ipc, label, res), rs in sorted(groups.items()):
    acc = np.array([r["top1"] for r in rs], float)
    out.append({"method": method, "grid": grid, "ipc": ipc, "label": label, "resolution": res,
                "n": len(rs), "train_img_per_s": float(np.mean(
                    [r.get("train_img_per_s") or 0.0 for r in rs])),
                "train_wall_s": float(np.mean([r.get("train_wall_s") or 0.0 for r in rs])),
                "top1_mean": float(acc.mean()), "top1_std": float(acc.std(ddof=1)) if len(rs) > 1
                else 0.0, "bytes_images": rs[0]["bytes_images"],
                "bytes_soft_labels": rs[0]["bytes_soft_labels"],
                "stored_images": rs[0]["stored_images"]})
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


def markdown_table(agg: list[dict], title: str = "") -> str:
  """Paper-style table: a row per method (and grid), columns IPC x label mode, plus storage."""
  ipcs = sorted({a["ipc"] for a in agg})
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  by = {(_name(a["method"], a["grid"], a.get("resolution", "full")), a["ipc"], a["label"]): a for a in agg}
  names = []
  for a in agg:
    n = _name(a["method"], a["grid"], a.get("resolution", "full"))
    if n not in names:
      names.append(n)
  head = ["method"] + [f"IPC{i} {l}" for i in ipcs for l in labels]
  lines = [f"## {title}" if title else "", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    cells = []
    for i in ipcs:
      for l in labels:
        a = by.get((n, i, l))
        cells.append("" if a is None else (f"{a['top1_mean']:.1f} ± {a['top1_std']:.1f}"
                                           if a["n"] > 1 else f"{a['top1_mean']:.1f}"))
    lines.append("| " + " | ".join([n] + cells) + " |")
  lines += ["", "Storage per method at each IPC (images as uint8 arrays; soft labels as fp16, "
            "one per view per epoch):", "", "| IPC | stored images | image bytes | soft-label bytes "
            "| soft / images |", "|---|---|---|---|---|"]
  for i in ipcs:
    a = next((x for x in agg if x["ipc"] == i and not x["method"].startswith("external")), None)
    if a:
      ratio = a["bytes_soft_labels"] / max(a["bytes_images"], 1)
      lines.append(f"| {i} | {a['stored_images']} | {_human(a['bytes_images'])} | "
                   f"{_human(a['bytes_soft_labels'])} | {ratio:.1f}x |")
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


def write_csv(rows: list[dict], path) -> None:
  from pca_jax.fs import save_text
  fields = ["method", "ipc", "grid", "label", "seed", "resolution", "view_size", "top1", "top5", "stored_images",
            "source_images_per_class", "bytes_images", "bytes_soft_labels", "train_wall_s",
            "train_img_per_s"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  for r in sorted(rows, key=lambda r: (r["method"], tuple(r["grid"]), r["ipc"], r["label"],
                                       r["seed"], r.get("resolution", "full"))):
    w.writerow({**r, "grid": f"{r['grid'][0]}x{r['grid'][1]}"})
  save_text(path, buf.getvalue())


def plot(agg: list[dict], path, title: str) -> None:
  """benchmark.png: top-1 vs IPC per method; one panel per label mode."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from pca_jax.fs import write_file
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 4.5), squeeze=False,
                           sharey=True)
  for ax, l in zip(axes[0], labels):
    names = []
    for a in agg:
      n = _name(a["method"], a["grid"], a.get("resolution", "full"))
      if a["label"] == l and n not in names:
        names.append(n)
    for i, n in enumerate(names):
      pts = sorted((a["ipc"], a["top1_mean"], a["top1_std"]) for a in agg
                   if a["label"] == l and _name(a["method"], a["grid"], a.get("resolution", "full")) == n)
      x, y, e = zip(*pts)
      style = "-o" if n.startswith("pca") else "--s" if n.startswith("external") else "-."
      ax.errorbar(x, y, yerr=e, fmt=style, capsize=3, label=n, color=plt.cm.tab20(i % 20),
                  lw=2 if n.startswith("pca") else 1)
    ax.set_xscale("log")
    ax.set_xticks(sorted({a["ipc"] for a in agg}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("images per class (IPC)")
    ax.set_title(f"{l} labels")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 %")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
  plt.close(fig)
