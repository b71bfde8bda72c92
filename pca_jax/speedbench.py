"""Speed and memory benchmarks (not tests). Prints a table and writes bench.json.

  python -m pca_jax.speedbench                                   # train step, scoring, augmentation
  python -m pca_jax.speedbench --what=train,score --size=112 --batch=64 --width=64
  python -m pca_jax.speedbench --what=pipeline --n_images=2000   # Grain ImageFolder decode + resize
  python -m pca_jax.speedbench --what=pipeline --size=224 --batch=1024 --n_images=16384 \
      --prefetch_mb=1024                          # ... and its peak RSS under a read-ahead budget
  python -m pca_jax.speedbench --what=scoring_memory --n_images=50000 --size=64   # peak host RSS
  python -m pca_jax.speedbench --what=torch,train --rounds=6 --steps=5   # JAX vs PyTorch, paired

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
                    "scoring_memory, torch (needs requirements-bench.txt)")
flags.DEFINE_integer("batch", 64, "global batch size")
flags.DEFINE_integer("size", 32, "image resolution")
flags.DEFINE_integer("width", 64, "ResNet width (64 = ResNet-18)")
flags.DEFINE_string("model", "resnet18", "model name")
flags.DEFINE_string("stem", "", "imagenet | small (default: small below 64px)")
flags.DEFINE_string("dtype", "float32", "compute dtype")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
flags.DEFINE_integer("rounds", 1, "with --what=torch,train: time the two train steps in this many "
                     "alternating blocks of --steps steps; JAX/PyTorch is then the median of the "
                     "per-round ratios, which cancels the drift of a shared machine")
flags.DEFINE_integer("n_images", 2000, "images for pipeline / scoring_memory")
flags.DEFINE_string("data_dir", "", "ImageFolder for pipeline / scoring_memory (made if empty)")
flags.DEFINE_float("prefetch_mb", 1024, "pipeline: host memory of decoded batches Grain may read "
                   "ahead (MiB; train.prefetch_mb / data.prefetch_mb)")
flags.DEFINE_integer("threads", 8, "pipeline: Grain reader threads (capped at the read-ahead "
                     "buffer)")
flags.DEFINE_float("consume_ms", 0, "pipeline: simulated time per batch of the consumer (a "
                   "device step), slept; > 0 lets the read-ahead fill as behind a slow step")
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


def _train_config():
  from pca_jax.config import default_train_config
  cfg = default_train_config()
  cfg.update(dict(epochs=10, batch_size=FLAGS.batch, crop="patch", grid=(2, 2),
                  image_size=FLAGS.size))
  return cfg


def _model_and_state(num_classes=1000):
  import jax
  from pca_jax.models.resnet import create_model
  from pca_jax.training import steps
  stem = FLAGS.stem or ("small" if FLAGS.size < 64 else "imagenet")
  model = create_model(FLAGS.model, num_classes, FLAGS.width, stem, FLAGS.dtype)
  tx, _ = steps.make_optimizer(_train_config(), 100)
  state = steps.create_train_state(model, tx, jax.random.key(0), (FLAGS.size, FLAGS.size, 3))
  return model, state, stem


def _train_step_fn():
  """(step callable, stem): the train step on an in-memory set with on-device patch crops, the
  trainer's own feed and step (pca_jax.training)."""
  import numpy as np
  from pca_jax import augment, parallel, rng
  from pca_jax.training import steps
  from pca_jax.training.feeds import InMemoryData, MemoryFeed
  mesh = parallel.make_mesh()
  _, state, stem = _model_and_state()
  state = parallel.replicate(state, mesh)
  m = max(FLAGS.batch * 4, 256)
  data = InMemoryData(np.random.default_rng(0).integers(0, 256, (m, FLAGS.size, FLAGS.size, 3),
                                                        dtype=np.uint8),
                      np.arange(m, dtype=np.int32) % 1000, 1000)
  cfg = _train_config()
  feed = MemoryFeed(data, cfg, mesh)
  feed.open(0)
  aug = augment.make_train_augment("patch", (FLAGS.size, FLAGS.size), (2, 2))
  step = steps.make_train_step(aug, steps.LossSpec(1000), rng.stream_key(0, "augment"), mesh,
                               feed.gather)
  box = {"state": state, "step": 0}

  def one():
    box["state"], metrics = step(box["state"], feed.args(box["step"]))
    box["step"] += 1
    return metrics["loss"]
  return one, stem


def bench_train():
  """Train step on an in-memory set with on-device patch-constrained crops (the PCA hot path)."""
  one, stem = _train_step_fn()
  return {"stem": stem, **_rates(one, FLAGS.batch, FLAGS.steps, FLAGS.warmup)}


def bench_score():
  """EL2N scoring forward pass (eval mode)."""
  import jax
  import numpy as np
  from pca_jax import augment, parallel, scoring
  mesh = parallel.make_mesh()
  model, state, stem = _model_and_state()
  variables = parallel.replicate({"params": state.params, "batch_stats": state.batch_stats}, mesh)
  x, y = parallel.shard_batch((np.zeros((FLAGS.batch, FLAGS.size, FLAGS.size, 3), np.uint8),
                               np.zeros(FLAGS.batch, np.int32)), mesh)
  fwd = jax.jit(lambda v, x, y: scoring.el2n(model.apply(v, augment.normalize(x), train=False), y))
  return {"stem": stem, **_rates(lambda: fwd(variables, x, y), FLAGS.batch, FLAGS.steps,
                                 FLAGS.warmup)}


def bench_augment():
  """patch_constrained_crop + flip + normalize alone, on device."""
  import jax
  import numpy as np
  from pca_jax import augment
  aug = jax.jit(augment.make_train_augment("patch", (FLAGS.size, FLAGS.size), (2, 2)))
  x = jax.device_put(np.zeros((FLAGS.batch, FLAGS.size, FLAGS.size, 3), np.uint8))
  keys = iter(range(10 ** 9))
  return _rates(lambda: aug(jax.random.key(next(keys)), x), FLAGS.batch, FLAGS.steps,
                FLAGS.warmup)


def _imagefolder(n: int, size: int) -> Path:
  """An ImageFolder of n random JPEGs (10 classes), cached under the temp dir."""
  import numpy as np
  from PIL import Image
  root = Path(FLAGS.data_dir or Path(tempfile.gettempdir()) / f"pca_jax_bench_{n}_{size}")
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


def bench_pipeline():
  """Host side: Grain reads an ImageFolder, decodes JPEGs and resizes (no model), reading ahead at
  most --prefetch_mb MiB of decoded batches; reports img/s and the process's peak RSS (VmHWM)."""
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ImageFolderSource
  src = ImageFolderSource(_imagefolder(FLAGS.n_images, max(FLAGS.size * 2, 64)))
  buffer, threads = pipeline.read_ahead(pipeline.image_batch_bytes(FLAGS.batch, FLAGS.size),
                                        FLAGS.prefetch_mb, FLAGS.threads)
  rss_before = _rss_mib()
  t = time.perf_counter()
  n = batches = 0
  for b in pipeline.ordered_batches(src, FLAGS.batch, FLAGS.size, 0.875,
                                    num_threads=FLAGS.threads, prefetch_mb=FLAGS.prefetch_mb):
    n += int(b["mask"].sum())
    batches += 1
    if FLAGS.consume_ms > 0:
      time.sleep(FLAGS.consume_ms / 1000)
  dt = time.perf_counter() - t
  return {"img_per_s": n / dt, "images": n, "batches": batches, "threads": threads,
          "prefetch_mb": FLAGS.prefetch_mb, "prefetch_buffer": buffer,
          "batch_mib": pipeline.image_batch_bytes(FLAGS.batch, FLAGS.size) / 2 ** 20,
          "consume_ms": FLAGS.consume_ms, "cpus": os.cpu_count(), "rss_before_mib": rss_before,
          "peak_rss_process_mib": _peak_rss_mib()}


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


def bench_scoring_memory():
  """Peak host RSS while streaming EL2N over an ImageFolder (the full-dataset scoring path)."""
  import jax
  from pca_jax import augment, parallel, scoring
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ImageFolderSource
  from pca_jax.models.resnet import create_model
  root = _imagefolder(FLAGS.n_images, FLAGS.size)
  src = ImageFolderSource(root)
  model = create_model("resnet18", src.num_classes, 4, "small")  # narrow: memory, not FLOPs
  v = jax.jit(lambda k: model.init(k, jax.numpy.zeros((1, FLAGS.size, FLAGS.size, 3)),
                                   train=False))(jax.random.key(0))
  rss_before = _rss_mib()
  peak = [rss_before]

  def progress(count):
    peak[0] = max(peak[0], _rss_mib())
  t = time.perf_counter()
  batches = pipeline.ordered_batches(src, FLAGS.batch, FLAGS.size, num_threads=8,
                                     prefetch_mb=FLAGS.prefetch_mb)
  out = scoring.score_dataset(lambda v, x: model.apply(v, augment.normalize(x), train=False), [v],
                              batches, num_examples=len(src), batch_size=FLAGS.batch,
                              mesh=parallel.make_mesh(), progress=progress)
  dt = time.perf_counter() - t
  ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"images": len(src), "size": FLAGS.size, "scored": int(out["seen"].sum()),
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


def _torch_step_fn():
  """(step callable, info): the same ResNet-18 train step in PyTorch (AdamW, CE)."""
  try:
    import torch
  except ImportError:
    raise app.UsageError("--what=torch needs PyTorch: pip install -r requirements-bench.txt")
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  stem = FLAGS.stem or ("small" if FLAGS.size < 64 else "imagenet")
  model = _torch_resnet18(1000, stem == "small", FLAGS.width)
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  x = torch.randn(FLAGS.batch, 3, FLAGS.size, FLAGS.size)
  y = torch.randint(0, 1000, (FLAGS.batch,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def one():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return None
  return one, {"threads": threads, "torch": torch.__version__, "params": params, "stem": stem,
               "note": "no augmentation in the torch step (inputs prepared once)"}


def bench_torch():
  """The same ResNet-18 train step in PyTorch (AdamW, CE), same batch/resolution/threads."""
  one, info = _torch_step_fn()
  return {**_rates(one, FLAGS.batch, FLAGS.steps, FLAGS.warmup), **info}


def bench_paired():
  """JAX and PyTorch train steps timed in alternating blocks (--rounds), see paired_rates."""
  torch_one, info = _torch_step_fn()
  jax_one, stem = _train_step_fn()
  p = paired_rates(torch_one, jax_one, FLAGS.batch, FLAGS.steps, FLAGS.rounds, FLAGS.warmup)
  return {"torch": {**p["ref"], **info}, "train": {**p["new"], "stem": stem},
          "paired": {k: p[k] for k in ("ratios", "ratio", "ratio_min", "ratio_max")}}


BENCHES = {"torch": bench_torch, "train": bench_train, "score": bench_score, "augment": bench_augment,
           "pipeline": bench_pipeline, "scoring_memory": bench_scoring_memory}


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


def main(argv):
  del argv
  import jax
  results = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
             "devices": jax.device_count(), "batch": FLAGS.batch, "size": FLAGS.size,
             "width": FLAGS.width, "model": FLAGS.model, "dtype": FLAGS.dtype,
             "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "host": host_info(), "results": {}}
  h = results["host"]
  print(f"host: {h['cpu']}, {h['cpus']} cpus, {' '.join(h['isa']) or 'ISA flags unknown'}",
        flush=True)
  names = [w.strip() for w in FLAGS.what.split(",") if w.strip()]
  for name in names:
    if name not in BENCHES:
      raise app.UsageError(f"unknown --what {name!r}; choose from {sorted(BENCHES)}")
  if FLAGS.rounds < 1:
    raise app.UsageError(f"--rounds must be >= 1, got {FLAGS.rounds}")
  paired = FLAGS.rounds > 1 and "torch" in names and "train" in names
  if FLAGS.rounds > 1 and not paired:
    raise app.UsageError("--rounds > 1 alternates the JAX and PyTorch train steps; it needs "
                         "--what to include both torch and train")
  for name in names:
    if paired and name in ("torch", "train"):
      if "jax_over_torch_paired" in results["results"]:
        continue  # the other half of the pair, already timed
      both = bench_paired()
      results["results"]["jax_over_torch_paired"] = both.pop("paired")
      results["results"].update(both)
      for n in ("torch", "train"):
        r = both[n]
        print(f"{n:>15}: {r['img_per_s']:10.1f} img/s  (min {r['min']:.1f}, max {r['max']:.1f}, "
              f"{FLAGS.rounds} alternating rounds)", flush=True)
      continue
    r = BENCHES[name]()
    results["results"][name] = r
    rate = r.get("img_per_s")
    extra = "" if "min" not in r else f"  (min {r['min']:.1f}, max {r['max']:.1f})"
    if name == "pipeline":
      extra += (f"  read-ahead {r['prefetch_buffer']} batches x {r['batch_mib']:.0f} MiB, "
                f"{r['threads']} threads")
    print(f"{name:>15}: {rate:10.1f} img/s{extra}"
          + (f"  peak RSS {r['peak_rss_process_mib']:.0f} MiB"
             if name in ("scoring_memory", "pipeline") else ""), flush=True)
  res = results["results"]
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
  from pca_jax.fs import save_json
  save_json(FLAGS.out, results)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
