"""Speed and memory benchmarks (not tests). Prints a table and writes bench.json.

  python -m pca_jax.speedbench                                   # train step, scoring, augmentation
  python -m pca_jax.speedbench --what=train,score --size=112 --batch=64 --width=64
  python -m pca_jax.speedbench --what=pipeline --size=224 --threads=2   # Grain vs a 1-thread loop
  python -m pca_jax.speedbench --what=decode --size=112   # PIL, PIL draft, simplejpeg: one thread
  python -m pca_jax.speedbench --what=score_stage --size=112 --width=16 --n_images=2000 \
      --host_cores=16 --device_img_per_s=15000   # the score stage, and ImageNet's projected
  python -m pca_jax.speedbench --what=scoring_memory --n_images=50000 --size=64   # peak host RSS
  python -m pca_jax.speedbench --what=torch,train --rounds=6 --steps=5   # JAX vs PyTorch, paired
  python -m pca_jax.speedbench --what=students --size=16 --width=16   # every student's train step

Every timing warms up first (compilation excluded), times >= --steps steps with
block_until_ready, and reports the median and the spread (min..max) of img/s over the steps.
With --rounds > 1 the JAX and PyTorch train steps alternate in blocks and their ratio is the
median of per-round ratios (a shared machine drifts +-10 % between minutes).
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from absl import app, flags

flags.DEFINE_string("what", "train,score,augment", "comma list: train, score, augment, pipeline, "
                    "decode, score_stage, scoring_memory, students, torch (needs "
                    "requirements-bench.txt)")
flags.DEFINE_integer("batch", 64, "global batch size")
flags.DEFINE_integer("size", 32, "image resolution")
flags.DEFINE_integer("width", 64, "ResNet width (64 = ResNet-18)")
flags.DEFINE_string("model", "resnet18", "model name")
flags.DEFINE_string("students", "resnet18,mobilenet_v2,efficientnet_b0,shufflenet_v2_x1_0,"
                    "vit_s_16", "students: the models whose train steps are timed (the first is "
                    "the reference of the ratios)")
flags.DEFINE_string("stem", "", "imagenet | small (default: small below 64px)")
flags.DEFINE_string("dtype", "float32", "compute dtype")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
flags.DEFINE_integer("rounds", 1, "with --what=torch,train: time the two train steps in this many "
                     "alternating blocks of --steps steps; JAX/PyTorch is then the median of the "
                     "per-round ratios, which cancels the drift of a shared machine")
flags.DEFINE_integer("n_images", 2000, "images for pipeline / decode / scoring_memory")
flags.DEFINE_string("data_dir", "", "ImageFolder for pipeline / decode / scoring_memory (made if "
                    "empty: photo JPEGs for pipeline and decode, noise for scoring_memory)")
flags.DEFINE_float("prefetch_mb", 1024, "pipeline: host memory of decoded images Grain may read "
                   "ahead (MiB; train.prefetch_mb / data.prefetch_mb)")
flags.DEFINE_integer("threads", 8, "pipeline: Grain reader threads (capped at the read-ahead "
                     "buffer)")
flags.DEFINE_float("consume_ms", 0, "pipeline: simulated time per batch of the consumer (a "
                   "device step), slept; > 0 lets the read-ahead fill as behind a slow step")
flags.DEFINE_integer("models", 4, "score_stage: scoring models K")
flags.DEFINE_integer("epochs", 1, "score_stage: epochs of the scoring models over --n_images photos")
flags.DEFINE_bool("together", True, "score_stage: the K models in one step on one decoded stream "
                  "(score.together); --notogether: one after another")
flags.DEFINE_integer("host_cores", 16, "score_stage projection: CPU cores of the host that decodes")
flags.DEFINE_float("device_img_per_s", 15000.0, "score_stage projection: ResNet-18 train img/s "
                   "of the device at 224px (stated; measure with --what=train --size=224 "
                   "--dtype=bfloat16 on the device); other sizes scale it by (224 / size)^2")
flags.DEFINE_integer("imagenet_epochs", 10, "score_stage projection: score.train.epochs")
flags.DEFINE_string("out", "bench.json", "where to write the results")
FLAGS = flags.FLAGS


def _timed(fn, steps):
  import jax
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def _summary(times, n_per_step):
  rates = sorted(n_per_step / t for t in times)
  return {"img_per_s": statistics.median(rates), "min": rates[0], "max": rates[-1],
          "steps": len(times), "step_ms": 1000 * statistics.median(times)}


def _warm(fn, warmup):
  import jax
  jax.block_until_ready(fn())  # compile
  for _ in range(warmup):
    jax.block_until_ready(fn())


def _rates(fn, n_per_step, steps, warmup):
  _warm(fn, warmup)
  return _summary(_timed(fn, steps), n_per_step)


def paired_rates(fn_ref, fn_new, n_per_step: int, steps: int, rounds: int, warmup: int) -> dict:
  """Times two steps in alternating blocks (ref new, new ref, ref new, ...) of `steps` steps.

  Returns {"ref": summary, "new": summary, "ratios": per-round new/ref img/s ratios (of block
  medians), "ratio": their median, "ratio_min", "ratio_max"}. Both steps see the same machine
  state within a round, so drift between minutes (+-10 % on a shared 2-core VM) cancels out of
  the ratio; the order flips every round so neither step always runs first.
  """
  if rounds < 1 or steps < 1:
    raise ValueError(f"paired timing needs rounds >= 1 and steps >= 1, got {rounds}, {steps}")
  _warm(fn_ref, warmup)
  _warm(fn_new, warmup)
  all_ref, all_new, ratios = [], [], []
  for r in range(rounds):
    order = [("ref", fn_ref), ("new", fn_new)]
    block = {}
    for name, fn in (order if r % 2 == 0 else order[::-1]):
      block[name] = _timed(fn, steps)
    all_ref += block["ref"]
    all_new += block["new"]
    ratios.append(statistics.median(block["ref"]) / statistics.median(block["new"]))
  return {"ref": _summary(all_ref, n_per_step), "new": _summary(all_new, n_per_step),
          "ratios": ratios, "ratio": statistics.median(ratios), "ratio_min": min(ratios),
          "ratio_max": max(ratios)}


def _train_config(opts):
  from pca_jax.config import default_train_config
  cfg = default_train_config()
  cfg.update(dict(epochs=10, batch_size=opts.batch, crop="patch", grid=(2, 2),
                  image_size=opts.size))
  return cfg


def _model_and_state(opts, num_classes=1000):
  import jax
  from pca_jax.models.registry import create_model
  from pca_jax.training import steps
  stem = opts.stem or ("small" if opts.size < 64 else "imagenet")
  model = create_model(opts.model, num_classes, opts.width, stem, opts.dtype)
  tx, _ = steps.make_optimizer(_train_config(opts), 100)
  state = steps.create_train_state(model, tx, jax.random.key(0), (opts.size, opts.size, 3))
  return model, state, stem


def _train_step_fn(opts):
  """(step callable, stem): the train step on an in-memory set with on-device patch crops, the
  trainer's own feed and step (pca_jax.training)."""
  import numpy as np
  from pca_jax import augment, parallel, rng
  from pca_jax.training import steps
  from pca_jax.training.feeds import InMemoryData, MemoryFeed
  mesh = parallel.make_mesh()
  _, state, stem = _model_and_state(opts)
  state = parallel.replicate(state, mesh)
  m = max(opts.batch * 4, 256)
  data = InMemoryData(np.random.default_rng(0).integers(0, 256, (m, opts.size, opts.size, 3),
                                                        dtype=np.uint8),
                      np.arange(m, dtype=np.int32) % 1000, 1000)
  cfg = _train_config(opts)
  feed = MemoryFeed(data, cfg, mesh)
  feed.open(0)
  aug = augment.make_train_augment("patch", (opts.size, opts.size), (2, 2))
  step = steps.make_train_step(aug, steps.LossSpec(1000, weighted_batch_stats=feed.pads),
                               rng.stream_key(0, "augment"), mesh,
                               feed.gather)
  box = {"state": state, "step": 0}

  def one():
    box["state"], metrics = step(box["state"], feed.args(box["step"]))
    box["step"] += 1
    return metrics["loss"]
  return one, stem


def bench_train(opts):
  """Train step on an in-memory set with on-device patch-constrained crops (the PCA hot path)."""
  one, stem = _train_step_fn(opts)
  return {"stem": stem, **_rates(one, opts.batch, opts.steps, opts.warmup)}


def bench_score(opts):
  """EL2N scoring forward pass (eval mode)."""
  import jax
  import numpy as np
  from pca_jax import augment, parallel, scoring
  mesh = parallel.make_mesh()
  model, state, stem = _model_and_state(opts)
  variables = parallel.replicate({"params": state.params, "batch_stats": state.batch_stats}, mesh)
  x, y = parallel.shard_batch((np.zeros((opts.batch, opts.size, opts.size, 3), np.uint8),
                               np.zeros(opts.batch, np.int32)), mesh)
  fwd = jax.jit(lambda v, x, y: scoring.el2n(model.apply(v, augment.normalize(x), train=False), y))
  return {"stem": stem, **_rates(lambda: fwd(variables, x, y), opts.batch, opts.steps,
                                 opts.warmup)}


def bench_augment(opts):
  """patch_constrained_crop + flip + normalize alone, on device."""
  import jax
  import numpy as np
  from pca_jax import augment
  aug = jax.jit(augment.make_train_augment("patch", (opts.size, opts.size), (2, 2)))
  x = jax.device_put(np.zeros((opts.batch, opts.size, opts.size, 3), np.uint8))
  keys = iter(range(10 ** 9))
  return _rates(lambda: aug(jax.random.key(next(keys)), x), opts.batch, opts.steps,
                opts.warmup)


def _imagefolder(n: int, size: int, data_dir: str = "") -> Path:
  """An ImageFolder of n upsampled-noise JPEGs (10 classes), cached under the temp dir: the
  scoring_memory bench's data (its peak RSS does not depend on the pixels)."""
  import numpy as np
  from PIL import Image
  root = Path(data_dir or Path(tempfile.gettempdir()) / f"pca_jax_bench_{n}_{size}")
  done = root / ".complete"
  if done.exists():
    return root
  rng = np.random.default_rng(0)
  for i in range(n):
    d = root / f"class{i % 10}"
    d.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    Image.fromarray(img).resize((size, size)).save(d / f"{i:06d}.jpg", quality=90)
  done.write_text("ok")
  return root


PHOTO_FOLDER_VERSION = 1  # bump when _photo_folder's images change: the cache key holds it


def _photo_crop(photo, rng, out_hw: tuple[int, int]):
  """A random crop of a photograph resized to out_hw = (height, width): the box keeps out_hw's
  aspect ratio and covers 55-100 % of the largest such box (random position), flipped left-right
  half of the time. photo: uint8 [H, W, 3]; returns uint8 [out_h, out_w, 3]."""
  import numpy as np
  from PIL import Image
  h, w = photo.shape[:2]
  out_h, out_w = out_hw
  full = min(h / out_h, w / out_w)  # the largest box of the output's aspect: full * out_hw
  side = full * rng.uniform(0.55, 1.0)
  bh, bw = int(round(side * out_h)), int(round(side * out_w))
  top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
  crop = Image.fromarray(photo[top:top + bh, left:left + bw]).resize((out_w, out_h),
                                                                     Image.BICUBIC)
  return np.asarray(crop)[:, ::-1] if rng.random() < 0.5 else np.asarray(crop)


def _photo_folder(n: int, data_dir: str = "") -> Path:
  """An ImageFolder of n photographic JPEGs (10 classes), cached under the temp dir.

  Random crops (_photo_crop) of the two photographs scikit-learn ships (china.jpg, flower.jpg,
  640 x 427), written at ImageNet's typical 500 x 375 (one in four portrait, 375 x 500), quality
  90: real photo statistics, so JPEG decoding costs what it costs on ImageNet (upsampled noise
  decodes at another speed). Keyed by n and PHOTO_FOLDER_VERSION.
  """
  import numpy as np
  from PIL import Image
  from sklearn.datasets import load_sample_images
  root = Path(data_dir or Path(tempfile.gettempdir()) /
              f"pca_jax_bench_photos_v{PHOTO_FOLDER_VERSION}_{n}")
  done = root / ".complete"
  if done.exists():
    return root
  photos = load_sample_images().images
  rng = np.random.default_rng(0)
  for i in range(n):
    d = root / f"class{i % 10}"
    d.mkdir(parents=True, exist_ok=True)
    out_hw = (500, 375) if rng.random() < 0.25 else (375, 500)
    img = _photo_crop(photos[int(rng.integers(len(photos)))], rng, out_hw)
    Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
  done.write_text("ok")
  return root


PIPELINE_CROP_FRACTION = 0.875  # the eval transform: Resize(size / 0.875) + CenterCrop(size)


def _bare_loop(files, size: int) -> dict:
  """The reference for the pipeline: one thread, no Grain, PIL open + full decode + fit_image
  (resize + centre crop) of each file; img/s."""
  from PIL import Image
  from pca_jax.data import pipeline
  from pca_jax.data.sources import to_rgb_uint8
  t = time.perf_counter()
  for f in files:
    with Image.open(f) as im:
      im.load()
      image = to_rgb_uint8(im)
    pipeline.fit_image(image, size, PIPELINE_CROP_FRACTION)
  return {"img_per_s": len(files) / (time.perf_counter() - t), "images": len(files)}


def bench_pipeline(opts):
  """Host side on photo JPEGs (_photo_folder): Grain's ordered_batches (--threads reader threads,
  DCT-scaled decoding, at most --prefetch_mb MiB of decoded images read ahead) against a
  one-thread loop over the same files (_bare_loop). Reports img/s, img/s per core (of
  os.cpu_count()), images per CPU-second of the process, the ratio pipeline per core / bare loop,
  the decodes counted by pipeline.images_decoded, and the process's peak RSS (VmHWM)."""
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ImageFolderSource
  src = ImageFolderSource(_photo_folder(opts.n_images, opts.data_dir))
  for f in src.files:  # the files in the page cache for both timings
    f.read_bytes()
  bare = _bare_loop(src.files, opts.size)
  buffer, threads = pipeline.read_ahead(pipeline.image_batch_bytes(1, opts.size),
                                        opts.prefetch_mb, opts.threads)
  rss_before = _rss_mib()
  decoded_before = pipeline.images_decoded()
  t, cpu = time.perf_counter(), time.process_time()
  n = batches = 0
  for b in pipeline.ordered_batches(src, opts.batch, opts.size, PIPELINE_CROP_FRACTION,
                                    num_threads=opts.threads, prefetch_mb=opts.prefetch_mb):
    n += int(b["mask"].sum())
    batches += 1
    if opts.consume_ms > 0:
      time.sleep(opts.consume_ms / 1000)
  dt, cpu = time.perf_counter() - t, time.process_time() - cpu
  cores = os.cpu_count() or 1
  per_core = n / dt / cores
  return {"img_per_s": n / dt, "img_per_s_per_core": per_core, "img_per_cpu_s": n / cpu,
          "bare_loop_img_per_s": bare["img_per_s"], "per_core_over_bare": per_core /
          bare["img_per_s"], "images": n, "batches": batches,
          "images_decoded": pipeline.images_decoded() - decoded_before, "threads": threads,
          "prefetch_mb": opts.prefetch_mb, "prefetch_images": buffer,
          "consume_ms": opts.consume_ms, "cpus": cores, "rss_before_mib": rss_before,
          "peak_rss_process_mib": _peak_rss_mib()}


def _decoders(min_side: int) -> dict:
  """name -> (JPEG bytes -> (uint8 [H', W', 3], scale s, full (H, W))): the decoders that
  sources.decode_image chooses between, at DCT scale 1/s = sources.dct_scale for min_side."""
  from pca_jax.data import sources
  decoders = {"pil_full": lambda data: sources._decode_pil(data, 0),
              "pil_draft": lambda data: sources._decode_pil(data, min_side)}
  if sources.simplejpeg is not None:
    decoders["simplejpeg"] = lambda data: sources._decode_jpeg_turbo(data, min_side)
  return decoders


def bench_decode(opts):
  """JPEG decoding alone, one thread, on the photo JPEGs (_photo_folder, bytes in memory) for
  --size (the eval transform's shorter side, size / 0.875, as min_side): PIL at full size, PIL's
  Image.draft and simplejpeg (libjpeg-turbo) at the DCT scale sources.dct_scale picks (1/2 for
  500 x 375 photos at 112px, none at 224px). Reports img/s of the decoding and of decoding + the
  resize to the eval crop (sources._resize_reduced where reduced, then fit_image), and the mean
  decoded shorter side."""
  from pca_jax.data import pipeline, sources
  files = sorted(_photo_folder(opts.n_images, opts.data_dir).rglob("*.jpg"))
  datas = [f.read_bytes() for f in files]
  min_side = pipeline.resize_side(opts.size, PIPELINE_CROP_FRACTION)
  out = {"min_side": min_side, "images": len(datas)}
  for name, decode in _decoders(min_side).items():
    t = time.perf_counter()
    sides = [min(decode(d)[0].shape[:2]) for d in datas]
    dt = time.perf_counter() - t
    t = time.perf_counter()
    for d in datas:
      image, scale, (height, width) = decode(d)
      if scale > 1:
        image = sources._resize_reduced(image, scale, height, width, min_side)
      pipeline.fit_image(image, opts.size, PIPELINE_CROP_FRACTION)
    out[name] = {"img_per_s": len(datas) / dt,
                 "with_fit_img_per_s": len(datas) / (time.perf_counter() - t),
                 "decoded_short_side": statistics.mean(sides)}
  return out


IMAGENET_TRAIN_IMAGES = 1_281_167


def project_score_stage(num_images: int, epochs: int, models: int, together: bool,
                        host_img_per_s: float, device_train_img_per_s: float) -> dict:
  """Wall time of a score stage whose host decodes and device trains at the given rates.

  Decodes: epochs x N for the training stream when the K models train together, K x epochs x N
  when they train one after another, plus N for the scoring pass (all K models score each decoded
  batch). Device work: K x epochs x N training images plus K x N scoring forward passes at a third
  of a training image each. The two overlap (decoding runs ahead of the step), so the stage takes
  the longer of the two; `bound` says which.
  """
  decodes = (1 if together else models) * epochs * num_images + num_images
  model_images = models * epochs * num_images + models * num_images / 3
  host_s = decodes / host_img_per_s
  device_s = model_images / device_train_img_per_s
  return {"decodes": decodes, "model_images": model_images, "host_s": host_s,
          "device_s": device_s, "wall_s": max(host_s, device_s),
          "bound": "host" if host_s > device_s else "device"}


def _decode_rate_one_core(files, size: int, min_side: int) -> float:
  """img/s of one thread reading + decoding (DCT-scaled for min_side > 0) + fitting to --size."""
  from pca_jax.data import pipeline
  from pca_jax.data.sources import decode_image
  t = time.perf_counter()
  for f in files:
    pipeline.fit_image(decode_image(f.read_bytes(), str(f), min_side), size,
                       PIPELINE_CROP_FRACTION)
  return len(files) / (time.perf_counter() - t)


def bench_score_stage(opts):
  """The score stage as a whole on the photo JPEGs (_photo_folder): --models models trained for
  --epochs at --size (together or one after another), then the scoring pass, through the runner
  (pca_jax.main.run_pipeline). Reports images decoded and their rate, model-images per second, and
  projects ImageNet's score stage (project_score_stage) for a host of --host_cores cores decoding at
  the one-core rate measured here and a device training --device_img_per_s at 224px."""
  from pca_jax.config import base_config
  from pca_jax.data import pipeline
  from pca_jax.main import run_pipeline
  root = _photo_folder(opts.n_images, opts.data_dir)
  c = base_config()
  c.stages, c.jax_cache_dir = "score", ""
  c.log.tensorboard = False  # the stage's time, not its event files (and no tensorboardX needed)
  c.data.update(dict(source="imagefolder", data_dir=str(root.parent), train_split=root.name,
                     image_size=opts.size, num_threads=opts.threads))
  c.model.update(dict(name=opts.model, width=opts.width, dtype=opts.dtype,
                      stem=opts.stem or ("small" if opts.size < 64 else "imagenet")))
  c.score.update(dict(num_models=opts.models, together=opts.together, batch_size=opts.batch))
  c.score.train.update(dict(epochs=opts.epochs, batch_size=opts.batch, warmup_epochs=0,
                            log_every_steps=10 ** 6, num_threads=opts.threads))
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    summary = run_pipeline(c, workdir)["score"]
    wall = time.perf_counter() - t
  trained = summary["images_decoded_training"] * (opts.models if opts.together else 1)
  files = sorted(root.rglob("*.jpg"))[:200]
  scaled = _decode_rate_one_core(files, opts.size, pipeline.resize_side(opts.size,
                                                                         PIPELINE_CROP_FRACTION))
  full = _decode_rate_one_core(files, opts.size, 0)
  device = opts.device_img_per_s * (224 / opts.size) ** 2
  # one after another, the host takes random-resized crops of fully decoded images
  projection = {mode: project_score_stage(IMAGENET_TRAIN_IMAGES, opts.imagenet_epochs,
                                          opts.models, mode == "together",
                                          (scaled if mode == "together" else full) *
                                          opts.host_cores, device)
                for mode in ("together", "separate")}
  return {"img_per_s": summary["images_decoded"] / wall, "images_decoded": summary["images_decoded"],
          "images_decoded_training": summary["images_decoded_training"],
          "model_images_trained": trained, "train_wall_s": summary["train_wall_s"],
          "score_wall_s": summary["score_wall_s"], "stage_wall_s": wall,
          "model_img_per_s_training": trained / summary["train_wall_s"],
          "together": opts.together, "models": opts.models,
          "decode_one_core_img_per_s": scaled, "decode_one_core_full_img_per_s": full,
          "projection": {"images": IMAGENET_TRAIN_IMAGES, "epochs": opts.imagenet_epochs,
                         "host_cores": opts.host_cores, "device_train_img_per_s": device,
                         **projection}}


def _status_mib(key: str) -> float:
  """A VmXXX line of /proc/self/status in MiB (NaN where there is no procfs)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def _rss_mib() -> float:
  return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
  """The process's peak resident memory (VmHWM; ru_maxrss where there is no procfs)."""
  peak = _status_mib("VmHWM")
  return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_scoring_memory(opts):
  """Peak host RSS while streaming EL2N over an ImageFolder (the full-dataset scoring path)."""
  import jax
  from pca_jax import augment, parallel, scoring
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ImageFolderSource
  from pca_jax.models.registry import create_model
  root = _imagefolder(opts.n_images, opts.size, opts.data_dir)
  src = ImageFolderSource(root)
  model = create_model("resnet18", src.num_classes, 4, "small")  # narrow: memory, not FLOPs
  v = jax.jit(lambda k: model.init(k, jax.numpy.zeros((1, opts.size, opts.size, 3)),
                                   train=False))(jax.random.key(0))
  rss_before = _rss_mib()
  peak = [rss_before]

  def progress(count):
    peak[0] = max(peak[0], _rss_mib())
  t = time.perf_counter()
  batches = pipeline.ordered_batches(src, opts.batch, opts.size, num_threads=8,
                                     prefetch_mb=opts.prefetch_mb)
  out = scoring.score_dataset(lambda v, x: model.apply(v, augment.normalize(x), train=False), [v],
                              batches, num_examples=len(src), batch_size=opts.batch,
                              mesh=parallel.make_mesh(), progress=progress)
  dt = time.perf_counter() - t
  ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"images": len(src), "size": opts.size, "scored": int(out["seen"].sum()),
          "rss_before_mib": rss_before, "peak_rss_sampled_mib": peak[0],
          "peak_rss_process_mib": ru_peak, "img_per_s": len(src) / dt,
          "under_2gib": ru_peak < 2048}


def _torch_resnet18(num_classes: int, small_stem: bool, width: int):
  """torchvision's ResNet-18 layout in plain torch (torchvision itself is not needed)."""
  import torch
  from torch import nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.down = None
      if stride != 1 or cin != cout:
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.down is None else self.down(x)))

  stem = ([nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
          if small_stem else
          [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
           nn.MaxPool2d(3, 2, 1)])
  layers, cin = [], width
  for i in range(4):
    cout = width * 2 ** i
    layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
    cin = cout
  return nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(cin, num_classes))


def _torch_step_fn(opts):
  """(step callable, info): the same ResNet-18 train step in PyTorch (AdamW, CE)."""
  try:
    import torch
  except ImportError:
    raise app.UsageError("--what=torch needs PyTorch: pip install -r requirements-bench.txt")
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  stem = opts.stem or ("small" if opts.size < 64 else "imagenet")
  model = _torch_resnet18(1000, stem == "small", opts.width)
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  x = torch.randn(opts.batch, 3, opts.size, opts.size)
  y = torch.randint(0, 1000, (opts.batch,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def one():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return None
  return one, {"threads": threads, "torch": torch.__version__, "params": params, "stem": stem,
               "note": "no augmentation in the torch step (inputs prepared once)"}


def bench_torch(opts):
  """The same ResNet-18 train step in PyTorch (AdamW, CE), same batch/resolution/threads."""
  one, info = _torch_step_fn(opts)
  return {**_rates(one, opts.batch, opts.steps, opts.warmup), **info}


def bench_paired(opts):
  """JAX and PyTorch train steps timed in alternating blocks (--rounds), see paired_rates."""
  torch_one, info = _torch_step_fn(opts)
  jax_one, stem = _train_step_fn(opts)
  p = paired_rates(torch_one, jax_one, opts.batch, opts.steps, opts.rounds, opts.warmup)
  return {"torch": {**p["ref"], **info}, "train": {**p["new"], "stem": stem},
          "paired": {k: p[k] for k in ("ratios", "ratio", "ratio_min", "ratio_max")}}


class _WithModel:
  """opts with another --model (absl's FLAGS stay as parsed)."""

  def __init__(self, opts, model: str):
    self._opts, self.model = opts, model

  def __getattr__(self, name):
    return getattr(self._opts, name)


def bench_students(opts):
  """The train step of each student of --students (the benchmark's student axis) at --size,
  --width, --batch: img/s and the ratio to the first one (ResNet-18 by default)."""
  names = [n.strip() for n in opts.students.split(",") if n.strip()]
  out = {}
  for name in names:
    out[name] = bench_train(_WithModel(opts, name))
    out[name]["vs_first"] = out[name]["img_per_s"] / out[names[0]]["img_per_s"]
  return out


BENCHES = {"torch": bench_torch, "train": bench_train, "students": bench_students, "score": bench_score, "augment": bench_augment,
           "pipeline": bench_pipeline, "decode": bench_decode, "score_stage": bench_score_stage,
           "scoring_memory": bench_scoring_memory}


def host_info() -> dict:
  """The CPU the numbers were taken on: model, cores and the vector extensions (AVX2, AVX-512,
  AMX) that the convolution libraries pick their kernels by. JAX/PyTorch differed by 14-30 % between
  two hosts with the same code, so runs on different CPUs are not to be compared blindly."""
  import platform
  info = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "isa": []}
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return info
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name" and value.strip():
      info["cpu"] = value.strip()
    elif key.strip() == "flags":
      cpu_flags = set(value.split())
      info["isa"] = sorted(f for f in cpu_flags if f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                      "avx512_vnni", "amx_bf16", "amx_tile"))
      break
  return info


def _print_result(name: str, r: dict, size: int) -> None:
  """One bench's result as one or a few lines."""
  if name == "students":
    for student, rs in r.items():
      print(f"{'train ' + student:>26}: {rs['img_per_s']:10.1f} img/s  (min {rs['min']:.1f}, "
            f"max {rs['max']:.1f}; {rs['vs_first']:.2f}x the first, stem {rs['stem']})",
            flush=True)
    return
  if name == "decode":
    for d in (d for d in _decoders(0) if d in r):
      print(f"{'decode ' + d:>22}: {r[d]['img_per_s']:8.1f} img/s, with fit_image "
            f"{r[d]['with_fit_img_per_s']:7.1f} img/s (decoded shorter side "
            f"{r[d]['decoded_short_side']:.0f}, min_side {r['min_side']})", flush=True)
    return
  if name == "score_stage":
    p = r["projection"]
    print(f"{'score_stage':>15}: {r['images_decoded']} images decoded in {r['stage_wall_s']:.1f} s "
          f"({r['img_per_s']:.1f} img/s), {r['model_img_per_s_training']:.1f} model-img/s "
          f"training ({r['models']} models, together={r['together']}); one core decodes "
          f"{r['decode_one_core_img_per_s']:.0f} img/s at {size}px "
          f"({r['decode_one_core_full_img_per_s']:.0f} at full size)", flush=True)
    for mode in ("together", "separate"):
      q = p[mode]
      print(f"{'ImageNet ' + mode:>22}: {q['decodes'] / 1e6:.1f} M decodes, host "
            f"{q['host_s'] / 60:.0f} min on {p['host_cores']} cores, device "
            f"{q['device_s'] / 60:.0f} min at {p['device_train_img_per_s']:.0f} img/s -> "
            f"{q['wall_s'] / 60:.0f} min ({q['bound']}-bound)", flush=True)
    return
  extra = "" if "min" not in r else f"  (min {r['min']:.1f}, max {r['max']:.1f})"
  if name == "pipeline":
    extra += (f" = {r['img_per_s_per_core']:.1f} per core ({r['cpus']}), "
              f"{r['img_per_cpu_s']:.1f} per CPU-s; bare loop {r['bare_loop_img_per_s']:.1f}"
              f" img/s, per core / bare {r['per_core_over_bare']:.2f}; read-ahead "
              f"{r['prefetch_images']} images, {r['threads']} threads")
  print(f"{name:>15}: {r.get('img_per_s'):10.1f} img/s{extra}"
        + (f"  peak RSS {r['peak_rss_process_mib']:.0f} MiB"
           if name in ("scoring_memory", "pipeline") else ""), flush=True)


def _ratios(res: dict) -> None:
  """The ratios between benches run together (score / train, JAX / PyTorch, augmentation /
  step), added to res and printed."""
  if "train" in res and "score" in res:
    res["score_over_train"] = res["score"]["img_per_s"] / res["train"]["img_per_s"]
    print(f"scoring / train img/s: {res['score_over_train']:.2f}")
  if "jax_over_torch_paired" in res:
    p = res["jax_over_torch_paired"]
    res["jax_over_torch"] = p["ratio"]
    print(f"JAX / PyTorch train img/s: {p['ratio']:.2f} (median of {len(p['ratios'])} paired "
          f"rounds; range {p['ratio_min']:.2f}-{p['ratio_max']:.2f})")
  elif "train" in res and "torch" in res:
    res["jax_over_torch"] = res["train"]["img_per_s"] / res["torch"]["img_per_s"]
    print(f"JAX / PyTorch train img/s: {res['jax_over_torch']:.2f}")
  if "train" in res and "augment" in res:
    res["augment_share_of_step"] = res["train"]["img_per_s"] / res["augment"]["img_per_s"]
    print(f"augmentation cost / train step: {100 * res['augment_share_of_step']:.1f}%")


def _bench_names(opts) -> tuple[list[str], bool]:
  """The --what names, checked, and whether torch and train are timed as a pair (--rounds)."""
  names = [w.strip() for w in opts.what.split(",") if w.strip()]
  for name in names:
    if name not in BENCHES:
      raise app.UsageError(f"unknown --what {name!r}; choose from {sorted(BENCHES)}")
  if opts.rounds < 1:
    raise app.UsageError(f"--rounds must be >= 1, got {opts.rounds}")
  paired = opts.rounds > 1 and "torch" in names and "train" in names
  if opts.rounds > 1 and not paired:
    raise app.UsageError("--rounds > 1 alternates the JAX and PyTorch train steps; it needs "
                         "--what to include both torch and train")
  return names, paired


def main(argv):
  del argv
  import jax
  opts = FLAGS
  results = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
             "devices": jax.device_count(), "batch": opts.batch, "size": opts.size,
             "width": opts.width, "model": opts.model, "dtype": opts.dtype,
             "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "host": host_info(), "results": {}}
  h = results["host"]
  print(f"host: {h['cpu']}, {h['cpus']} cpus, {' '.join(h['isa']) or 'ISA flags unknown'}",
        flush=True)
  names, paired = _bench_names(opts)
  res = results["results"]
  for name in names:
    if paired and name in ("torch", "train"):
      if "jax_over_torch_paired" in res:
        continue  # the other half of the pair, already timed
      both = bench_paired(opts)
      res["jax_over_torch_paired"] = both.pop("paired")
      res.update(both)
      for n in ("torch", "train"):
        r = both[n]
        print(f"{n:>15}: {r['img_per_s']:10.1f} img/s  (min {r['min']:.1f}, max {r['max']:.1f}, "
              f"{opts.rounds} alternating rounds)", flush=True)
      continue
    res[name] = BENCHES[name](opts)
    _print_result(name, res[name], opts.size)
  _ratios(res)
  from pca_jax.fs import save_json
  save_json(opts.out, results)
  print(f"wrote {opts.out}")


if __name__ == "__main__":
  app.run(main)
