"""Which benchmark cells to run: method x grid x IPC x label mode x seed x resolution."""

from __future__ import annotations

from typing import Sequence

LABEL_MODES = ("hard", "soft")


def method_names(bench) -> list[str]:
  return [m.strip() for m in str(bench.methods).split(",") if m.strip()]


def needs_teacher(bench) -> bool:
  """A teacher is trained (or loaded) when soft labels are asked for or a method needs one."""
  from pca_jax.dc.methods import METHODS
  return "soft" in tuple(bench.label_modes) or any(
      METHODS[m].teacher for m in method_names(bench) if m in METHODS)


def cell_id(c: dict) -> str:
  g = c["grid"]
  res = c.get("resolution", "full")
  return (f"{c['method']}-ipc{c['ipc']}-g{g[0]}x{g[1]}-{c['label']}-s{c['seed']}"
          + ("" if res == "full" else f"-r{res}"))


def plan_cells(bench, combine_grid: Sequence[int], image_size: int,
               external: dict[str, int] | None = None) -> tuple[list[dict], list[dict]]:
  """All cells to run, and the skipped ones with the reason (grid not dividing the image size).

  Each method's grids come from its registry entry (pca_jax.dc.methods): whole images (1x1), the
  PCA grid, or every grid of the sweep (bench.grids); external runs once per given set at its own
  IPC. Resolutions other than "full" apply to mosaics with square cells only.
  """
  from pca_jax.dc.methods import EXTERNAL, METHODS
  methods = method_names(bench)
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
                c = {"method": method if not name else f"{EXTERNAL}:{name}", "ipc": int(ipc),
                     "grid": (int(grid[0]), int(grid[1])), "label": label, "seed": int(seed)}
                if res != "full":
                  c["resolution"] = res
                cells.append(c)
  return cells, skipped
