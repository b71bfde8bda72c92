"""The report stage: results.json and results.md from the current outputs of the other stages.

Only stages whose outputs are current for this config (the runner's `uses`) are reported, so a
number is never shown under the name of a set it was not measured on.
"""

from __future__ import annotations


PAPER_IMAGENET = {  # ResNet-18, hard labels, top-1 % (REFERENCE.md)
    10: {"random": 4.6, "el2n": 12.2, "pca": 22.8},
    50: {"random": 20.6, "el2n": 31.1, "pca": 39.1},
    100: {"random": 31.7, "el2n": 38.7, "pca": 45.5},
}
REPORTED = ("score", "tune", "select", "combine", "store", "train", "eval")
CROP_NAMES = {"patch": "patch-constrained crops inside one mosaic cell",
              "rrc": "random-resized crops of the whole stored image", "none": "no crops"}


def _fmt(v, spec="{:.2f}"):
  return "n/a" if v is None else spec.format(v)


def _window(cfg) -> str:
  """The selection's window, e.g. ' in the window 0-0.5 (at random)'; '' for the default."""
  lo, hi = (float(w) for w in cfg.select.window)
  if cfg.select.mode != "easy" or ((lo, hi) == (0.0, 1.0) and cfg.select.order == "easy"):
    return ""
  return f" in the window {lo:g}-{hi:g}" + (" (at random)" if cfg.select.order == "random" else "")


def _prune_line(cfg, summaries) -> str:
  from pca_jax.config import select_score
  if cfg.select.mode == "random":
    return "Prune: class-balanced random selection (no scores)."
  how = f"{cfg.select.mode} {select_score(cfg)}{_window(cfg)}"
  if cfg.select.mode == "ccs":
    how += f" (cutoff {cfg.select.ccs_beta}, {cfg.select.ccs_strata} strata)"
  if "score" not in summaries:
    return f"Prune: {how} from a score stage that is not current."
  if summaries["score"].get("precomputed"):
    return f"Prune: {how}, precomputed ({cfg.score.scores_path})."
  return (f"Prune: {how}, mean of {cfg.score.num_models} models "
          f"trained {cfg.score.train.epochs} epochs on the full train set.")


def _results(cfg, summaries: dict, walls: dict, manifest: dict) -> dict:
  """results.json's content: the set, its student and its test top-1 (None where a stage is
  not current)."""
  from pca_jax.config import select_score
  tr, ev = summaries.get("train", {}), summaries.get("eval", {})
  return {
      "method": cfg.method, "dataset": manifest.get("source", {}).get("name", cfg.data.source),
      "ipc": cfg.select.ipc, "grid": list(cfg.combine.grid), "selection": cfg.select.mode,
      "score": select_score(cfg) if cfg.select.mode != "random" else None,
      "model": cfg.model.name, "width": cfg.model.width,
      "labels": cfg.train.label_mode, "crop": cfg.train.crop, "resolution": cfg.train.resolution,
      "top1": ev.get("eval_top1"), "top5": ev.get("eval_top5"), "test_images": ev.get("eval_count"),
      "stored_images": manifest.get("num_images"), "image_shape": manifest.get("image_shape"),
      "bytes_images": manifest.get("bytes", {}).get("images"),
      "bytes_labels": manifest.get("bytes", {}).get("labels"),
      "train_epochs": cfg.train.epochs if tr else None, "train_steps": tr.get("steps"),
      "train_loss": tr.get("train_loss"), "train_img_per_s": tr.get("train_img_per_s"),
      "wall_s": walls, "stages_reported": sorted(summaries),
  }


def _summary_lines(cfg, results: dict, summaries: dict, tuned: bool) -> list[str]:
  """The table of the set and its top-1, then one line each on the prune step, the student, the
  evaluation and what is not reported."""
  tr, ev = summaries.get("train", {}), summaries.get("eval", {})
  grid = f"{cfg.combine.grid[0]}x{cfg.combine.grid[1]}"
  selection = f"{cfg.select.mode} {results['score'] or ''}{_window(cfg)}".strip()
  lines = [
      f"# PCA results: {results['dataset']}", "",
      "| method | IPC | grid | selection | labels | top-1 % | top-5 % | stored images | image bytes "
      "| label bytes |", "|---|---|---|---|---|---|---|---|---|---|",
      f"| {cfg.method} | {cfg.select.ipc} | {grid} | {selection} | {cfg.train.label_mode} | "
      f"{_fmt(results['top1'])} | {_fmt(results['top5'])} | "
      f"{_fmt(results['stored_images'], '{}')} | {_fmt(results['bytes_images'], '{:,}')} | "
      f"{_fmt(results['bytes_labels'], '{:,}')} |", "",
      _prune_line(cfg, summaries)]
  if tr:
    lines.append(
        f"Student: {cfg.model.name} (width {cfg.model.width}, {cfg.model.stem} stem), "
        f"{cfg.train.epochs} epochs ({tr['steps']} steps), {cfg.train.optimizer} lr {cfg.train.lr}, "
        f"batch {cfg.train.batch_size}, {cfg.train.label_mode} labels, "
        f"{CROP_NAMES.get(cfg.train.crop, cfg.train.crop)} (scale {tuple(cfg.train.crop_scale)}), "
        f"{cfg.train.resolution} resolution; final train loss {_fmt(tr.get('train_loss'), '{:.4f}')}.")
  if ev:
    lines.append(f"Evaluated on {ev['eval_count']} images of the {cfg.data.eval_split} split.")
  missing = [s for s in REPORTED if s not in summaries and (s != "tune" or tuned)]
  if missing:
    lines.append(f"Not reported (not run, or made under another config): {', '.join(missing)}.")
  return lines


def _tune_lines(cfg, tune: dict) -> list[str]:
  """The tune section of results.md: the validation split, the search table, the choice."""
  from pca_jax.pca.tune import search_markdown
  return [
      "", "## Settings chosen on a validation split (tune stage)", "",
      f"{tune['val_examples']} images ({tune['val_fraction']} of every class) held out of the "
      f"{cfg.data.train_split} split for validation and left out of every candidate set and "
      f"of the final set; the {cfg.data.eval_split} split was not read before the eval stage. "
      f"Every candidate stores {tune['ipc']} images per class, trained {tune['epochs']} epochs "
      f"with seeds {tune['seeds']}; tie rule: {tune['tie_rule']} (tolerance "
      f"{tune['tie_tolerance']} points). Chosen (bold): {tune['choice']['name']}.", "",
      *search_markdown(tune), "",
      f"Search wall time: {tune['search_wall_s']:.1f} s."]


def stage_report(run, stage) -> dict:
  from pca_jax.fs import read_json, save_json, save_text
  from pca_jax.pca.tune import tuned_config, tuning

  tuned = tuning(run.config)
  # the chosen settings when the search is current; else the config as given
  cfg = tuned_config(run) if tuned and "tune" in stage.upstream else run.config
  summaries = {s: stage.upstream[s]["summary"] for s in REPORTED if s in stage.upstream}
  walls = {s: round(stage.upstream[s]["wall_s"], 1) for s in REPORTED if s in stage.upstream}
  manifest = read_json(run.path("compressed", "manifest.json")) if "store" in summaries else {}
  results = _results(cfg, summaries, walls, manifest)
  tune = read_json(run.path("tune.json")) if "tune" in summaries else None
  if tune:
    results["tune"] = {"choice": tune["choice"]["name"],
                       "val_top1": tune["choice"]["val_top1_mean"],
                       "val_examples": tune["val_examples"],
                       "search_wall_s": tune["search_wall_s"]}
    results["window"] = [float(w) for w in cfg.select.window]
    results["order"] = cfg.select.order
  save_json(run.path("results.json"), results)
  lines = _summary_lines(cfg, results, summaries, tuned) + (_tune_lines(cfg, tune) if tune else [])
  lines += ["", "| stage | wall time (s) |", "|---|---|",
            *[f"| {s} | {t} |" for s, t in walls.items()], "",
            "Files: scores.npy, score_hist.png, selected.npy, compressed/ (images.npy, labels.npy, "
            "manifest.json, preview.png), train/metrics.jsonl, train.json, eval.json"
            + (", tune.json, tune/ (search.csv, val_indices.npy, sets/, runs/)." if tune else
               ".")]
  if cfg.data.source == "tfds" and cfg.data.tfds_name == "imagenet2012" and \
      cfg.select.ipc in PAPER_IMAGENET:
    p = PAPER_IMAGENET[cfg.select.ipc]
    lines += ["", f"Paper (ImageNet-1K, ResNet-18, hard labels) at IPC {cfg.select.ipc}: random "
              f"{p['random']} / EL2N {p['el2n']} / PCA {p['pca']} top-1 %."]
  save_text(run.path("results.md"), "\n".join(lines) + "\n")
  run.log(f"[report] {run.path('results.md')}")
  return {"top1": results["top1"], "stored_images": results["stored_images"]}
