"""How far the cheaper ways of scoring agree with the reference: the score stage run in variants.

  python -m pca_jax.agreement --config=configs/demo.py --workdir=runs/agreement_demo
  python -m pca_jax.agreement --config=configs/agreement_folder.py --workdir=runs/agreement_folder

The REFERENCE is the config's score stage with the K models trained one after another at
data.image_size on a schedule that ends with training (score.together=False,
score.image_size=0, score.train.schedule_epochs=0), at config.seed. Every variant is an
INDEPENDENT run (other initialisations, data orders and crops), at config.seed + each
--seed_offsets entry (1 by default), of the reference with at most one change, in
<workdir>/<variant> (<variant>_seed<s> for other offsets; a rerun reuses what is there under the
same fingerprint):

  seed      no change: two independent runs of the reference mode, the yardstick
  together  the K models in one step on one stream of decoded batches (score.together=True)
  lowres    trained and scored at half data.image_size (score.image_size)
  early     an early checkpoint of a schedule --early_factor x longer (score.train.schedule_epochs)
  config    the config as given (its defaults), when they differ from the reference

For each variant against the reference: the Spearman correlation of the EL2N scores (the mean
over the K models), and the overlap of the easiest --ipc images per class (the selection PCA
makes at IPC 10 with 1x1 cells); random selections overlap ipc / class size on average. A mode
is as safe as the reference when it agrees with the reference as well as the reference agrees
with itself across seeds (the seed row). Writes agreement.json and agreement.md into --workdir.

configs/agreement_folder.py reads an ImageFolder of 20,000 small synthetic photographs (digits
drawn over crops of the photos scikit-learn ships, 10 classes): written by `write_photo_digits`
at data.data_dir/<train split> when that folder does not exist (an existing one is read as is).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import numpy as np
from absl import app, flags

from pca_jax import main as cli  # defines --config and --workdir (here: the variants' parent)

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", "seed,together,lowres,early", "Comma list of variants to "
                    "compare with the reference.")
flags.DEFINE_integer("ipc", 10, "Images per class of the easiest-set overlap.")
flags.DEFINE_string("seed_offsets", "1", "Comma list: every variant runs at config.seed + each "
                    "offset (several give several independent samples of each agreement).")
flags.DEFINE_integer("early_factor", 4, "early: the nominal schedule is this many times "
                     "score.train.epochs.")
flags.DEFINE_integer("folder_images", 20000, "write_photo_digits: images of the ImageFolder "
                     "written when data.data_dir has none.")

REFERENCE = {"score.together": False, "score.image_size": 0, "score.train.schedule_epochs": 0}
VARIANT_NAMES = ("seed", "together", "lowres", "early", "config")


def variant_overrides(config: Any, name: str, early_factor: int = 4,
                      seed_offset: int = 1) -> dict[str, Any]:
  """The dotted config fields of variant `name`: the reference's with config.seed + seed_offset
  (an independent run: other initialisations, data orders and crops) and the variant's one
  change."""
  if name == "reference":
    return dict(REFERENCE)
  if seed_offset == 0:
    raise ValueError("a variant at the reference's own seed is not an independent run; use seed "
                     "offsets other than 0")
  other_seed = {"seed": int(config.seed) + int(seed_offset)}
  if name == "seed":
    return {**REFERENCE, **other_seed}
  if name == "together":
    return {**REFERENCE, **other_seed, "score.together": True}
  if name == "lowres":
    return {**REFERENCE, **other_seed, "score.image_size": max(1, config.data.image_size // 2)}
  if name == "early":
    return {**REFERENCE, **other_seed,
            "score.train.schedule_epochs": early_factor * config.score.train.epochs}
  if name == "config":
    return other_seed
  raise ValueError(f"unknown agreement variant {name!r}; choose from {VARIANT_NAMES}")


def _field(config: Any, key: str) -> Any:
  """The value of a dotted field; a field the config lacks counts as the reference's value."""
  node = config
  for part in key.split("."):
    if part not in node:
      return REFERENCE.get(key)
    node = node[part]
  return node


def _with(config: Any, overrides: dict[str, Any]) -> Any:
  """A copy of config running only the score stage, with the dotted overrides set."""
  c = copy.deepcopy(config)
  for key, value in overrides.items():
    parent, _, last = key.rpartition(".")
    node = c
    for part in parent.split(".") if parent else ():
      node = node[part]
    node[last] = value
  c.stages = "score"
  return c


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation of two [N] score vectors (average ranks for ties)."""
  from scipy.stats import rankdata
  ra, rb = rankdata(a), rankdata(b)
  return float(np.corrcoef(ra, rb)[0, 1])


def easiest_overlap(a: np.ndarray, b: np.ndarray, labels: np.ndarray, ipc: int) -> float:
  """|A & B| / |A| for A, B the ipc easiest (lowest-score) examples of every class under a, b."""
  from pca_jax.selection import select_per_class
  sa = set(select_per_class(a, labels, ipc, "easy").tolist())
  sb = set(select_per_class(b, labels, ipc, "easy").tolist())
  return len(sa & sb) / len(sa)


def compare(reference: dict, other: dict, labels: np.ndarray, ipc: int) -> dict:
  """Agreement of one variant's EL2N with the reference's: Spearman, easiest-set overlap."""
  return {"spearman_el2n": spearman(reference["el2n"], other["el2n"]),
          "overlap_easiest": easiest_overlap(reference["el2n"], other["el2n"], labels, ipc)}


def run_variant(config: Any, workdir: str, name: str, early_factor: int,
                seed_offset: int = 1) -> dict:
  """Runs (or reuses) the score stage of one variant in <workdir>/<name> (<name>_seed<s> for
  seed offsets other than 1); its EL2N [N], labels and summary."""
  from pca_jax import fs
  overrides = variant_overrides(config, name, early_factor, seed_offset)
  path = os.path.join(workdir, name if seed_offset == 1 or name == "reference" else
                      f"{name}_seed{overrides['seed']}")
  t = time.time()
  summaries = cli.run_pipeline(_with(config, overrides), path)
  marker = fs.read_json(fs.join(path, "stages", "score.json"))
  return {"name": name, "overrides": overrides,
          "el2n": fs.load_npy(fs.join(path, "scores_el2n.npy")),
          "labels": fs.load_npy(fs.join(path, "labels.npy")),
          "summary": marker.get("summary", summaries.get("score", {})),
          "wall_s": time.time() - t}


def agreement_table(rows: list[dict], ipc: int, chance: float) -> str:
  lines = [f"| variant (vs reference) | change | Spearman EL2N | overlap of the {ipc} easiest per "
           "class | score stage wall s | images decoded |", "|---|---|---|---|---|---|"]
  for r in rows:
    change = ", ".join(f"{k}={v}" for k, v in r["change"].items()) or "-"
    lines.append(f"| {r['name']} | {change} | {r['spearman_el2n']:.3f} | "
                 f"{100 * r['overlap_easiest']:.1f} % | {r['stage_wall_s']:.1f} | "
                 f"{r['images_decoded']:,} |")
  lines.append(f"\nRandom selections overlap {100 * chance:.1f} % on average (ipc / class size).")
  return "\n".join(lines)


def measure(config: Any, workdir: str, variants: list[str], ipc: int,
            early_factor: int, seed_offsets: tuple[int, ...] = (1,)) -> dict:
  """Runs the reference and the variants; returns {"rows": [...], "table": markdown}."""
  from pca_jax import fs
  ref = run_variant(config, workdir, "reference", early_factor)
  labels = ref["labels"]
  counts = np.bincount(labels)
  chance = float(np.mean(ipc / counts))

  def row(v: dict, change: dict) -> dict:
    s = v["summary"]
    return {"name": v["name"], "change": change, **compare(ref, v, labels, ipc),
            "stage_wall_s": float(s.get("train_wall_s", 0) + s.get("score_wall_s", 0)),
            "images_decoded": int(s.get("images_decoded", 0))}
  rows = [row(ref, {})]
  reference_config = _with(config, REFERENCE)
  for offset, name in ((o, n) for o in seed_offsets for n in variants):
    overrides = variant_overrides(config, name, early_factor, offset)
    changed = _with(config, overrides)
    change = {k: _field(changed, k) for k in (*REFERENCE, "seed")
              if _field(changed, k) != _field(reference_config, k)}
    if name == "config" and set(change) <= {"seed"}:
      continue  # the config's scoring is the reference's
    rows.append(row(run_variant(config, workdir, name, early_factor, offset), change))
  table = agreement_table(rows, ipc, chance)
  out = {"ipc": ipc, "chance_overlap": chance, "rows": rows, "num_examples": int(len(labels))}
  fs.save_json(fs.join(workdir, "agreement.json"), out)
  fs.save_text(fs.join(workdir, "agreement.md"), table + "\n")
  return {**out, "table": table}


def write_photo_digits(root: str, n: int, size: int = 40, seed: int = 0) -> str:
  """An ImageFolder of n JPEGs (quality 90, size x size): scikit-learn's 1,797 handwritten digits,
  each drawn many times at a random scale (60-90 % of the image), rotation and position, in a
  colour opposite to the background's mean (with noise), over a random crop of one of the two
  photographs scikit-learn ships; folders 0..9 by digit. Written into a temporary folder beside
  root and renamed, so root exists only complete; an existing root is returned as it is (never
  written into)."""
  from PIL import Image
  from sklearn.datasets import load_digits, load_sample_images
  import shutil
  if os.path.exists(root):
    return root
  final, root = root, root.rstrip("/") + ".writing"
  shutil.rmtree(root, ignore_errors=True)  # a write that was interrupted
  rng = np.random.default_rng(seed)
  digits = load_digits()
  glyphs = (digits.images * (255.0 / 16.0)).astype(np.uint8)
  photos = [Image.fromarray(p) for p in load_sample_images().images]
  for c in range(10):
    os.makedirs(os.path.join(root, str(c)), exist_ok=True)
  for i in range(n):
    j = int(rng.integers(len(glyphs)))
    photo = photos[int(rng.integers(len(photos)))]
    crop = int(rng.integers(size, 4 * size))
    left = int(rng.integers(0, photo.width - crop))
    top = int(rng.integers(0, photo.height - crop))
    background = photo.crop((left, top, left + crop, top + crop)).resize((size, size),
                                                                         Image.BILINEAR)
    g = int(rng.integers(int(0.6 * size), int(0.9 * size)))
    glyph = Image.fromarray(glyphs[j]).resize((g, g), Image.BILINEAR).rotate(
        float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    # a colour far from the background's mean, so that the digit stays readable
    mean = np.asarray(background, np.float32).reshape(-1, 3).mean(0)
    colour = tuple(int(v) for v in np.clip(255 - mean + rng.normal(0, 30, 3), 0, 255))
    x, y = (int(v) for v in rng.integers(0, size - g + 1, 2))
    background.paste(Image.new("RGB", (g, g), colour), (x, y), glyph)
    path = os.path.join(root, str(int(digits.target[j])), f"{i:06d}.jpg")
    background.save(path, quality=90)
  os.rename(root, final)
  return final


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
  try:
    run_from_flags(FLAGS.config)
  except ValueError as e:  # unknown variants, bad offsets, config and data errors: one line
    import sys
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_from_flags(config: Any) -> None:
  """Checks the variants and offsets, writes the synthetic folder if needed, measures, prints."""
  variants = [v.strip() for v in FLAGS.variants.split(",") if v.strip()]
  for v in variants:
    variant_overrides(config, v)  # unknown names fail before anything runs
  offsets = tuple(int(o) for o in FLAGS.seed_offsets.split(",") if o.strip())
  for o in offsets:
    variant_overrides(config, "seed", seed_offset=o)
  train_dir = os.path.join(config.data.data_dir, config.data.train_split)
  if config.data.source == "imagefolder" and not os.path.exists(train_dir):
    t = time.time()
    write_photo_digits(train_dir, FLAGS.folder_images)
    print(f"[agreement] wrote {FLAGS.folder_images} images to {train_dir} "
          f"({time.time() - t:.0f} s)", flush=True)
  out = measure(config, FLAGS.workdir, variants, FLAGS.ipc, FLAGS.early_factor, offsets)
  print(out["table"], flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
