"""The speed benchmark runs end to end (tiny model; speed targets live in the benchmark, not here)."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.test_main import ROOT


@pytest.mark.long
def test_bench_smoke(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run([sys.executable, "-m", "pca_jax.speedbench",
                      "--what=train,score,augment,students", "--students=resnet10,shufflenet_v2_x1_0,"
                      "vit_s_16", "--model=resnet10", "--width=4", "--size=8", "--batch=16",
                      "--steps=2", "--warmup=0", f"--out={out}"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads(out.read_text())
  import pca_jax
  assert pca_jax.CPU_XLA_FLAGS[0] in report["xla_flags"]  # the run's flags are on record
  host = report["host"]  # and the machine: numbers from different CPUs are not comparable
  assert host["cpus"] == os.cpu_count() and host["cpu"] and isinstance(host["isa"], list)
  assert f"host: {host['cpu']}, {host['cpus']} cpus" in r.stdout
  res = report["results"]
  for name in ("train", "score", "augment"):
    assert res[name]["img_per_s"] > 0 and res[name]["min"] <= res[name]["max"]
  assert res["score_over_train"] > 0 and "augment_share_of_step" in res
  assert "JAX / PyTorch" not in r.stdout  # torch was not asked for
  students = res["students"]  # every student's train step, beside the first one's
  assert list(students) == ["resnet10", "shufflenet_v2_x1_0", "vit_s_16"]
  assert students["resnet10"]["vs_first"] == 1.0
  for name, rs in students.items():
    assert rs["img_per_s"] > 0 and rs["stem"] == "small"
    assert f"train {name}" in r.stdout


def test_paired_rates_alternates_and_takes_per_round_ratios():
  from pca_jax import speedbench as bench
  calls = []

  def make(name, seconds):
    def fn():
      calls.append(name)
      time.sleep(seconds)
    return fn
  p = bench.paired_rates(make("ref", 0.02), make("new", 0.01), n_per_step=10, steps=2, rounds=3,
                         warmup=1)
  # warm-up (compile call + 1) for each, then blocks ref new | new ref | ref new
  assert calls == ["ref"] * 2 + ["new"] * 2 + ["ref", "ref", "new", "new", "new", "new", "ref",
                                               "ref", "ref", "ref", "new", "new"]
  assert len(p["ratios"]) == 3 and p["ref"]["steps"] == 6 and p["new"]["steps"] == 6
  assert p["ratio_min"] <= p["ratio"] <= p["ratio_max"]
  assert 1.3 < p["ratio"] < 2.5  # new takes ~half the time of ref: ~2x the img/s
  assert p["new"]["img_per_s"] > p["ref"]["img_per_s"]
  with pytest.raises(ValueError, match="rounds >= 1"):
    bench.paired_rates(make("a", 0), make("b", 0), 1, 1, 0, 0)


def test_rounds_needs_torch_and_train(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "pca_jax.speedbench", "--what=train", "--rounds=3",
                      f"--out={tmp_path / 'b.json'}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode != 0 and "needs --what to include both torch and train" in r.stderr
  assert not (tmp_path / "b.json").exists()


def test_pipeline_and_decode_benches_on_photos(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  budget = 2 * 16 * 16 * 3 / 2 ** 20  # two 16px images, in MiB
  r = subprocess.run([sys.executable, "-m", "pca_jax.speedbench", "--what=pipeline,decode",
                      "--size=16", "--batch=8", "--n_images=20", "--threads=4",
                      f"--data_dir={tmp_path / 'images'}", f"--prefetch_mb={budget}",
                      f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads(out.read_text())["results"]
  p = res["pipeline"]
  assert p["images"] == 20 and p["batches"] == 3 and p["images_decoded"] == 20
  for key in ("img_per_s", "img_per_s_per_core", "img_per_cpu_s", "bare_loop_img_per_s",
              "per_core_over_bare"):
    assert p[key] > 0, key
  assert p["img_per_s_per_core"] == pytest.approx(p["img_per_s"] / os.cpu_count())
  assert p["per_core_over_bare"] == pytest.approx(p["img_per_s_per_core"] /
                                                  p["bare_loop_img_per_s"])
  assert p["prefetch_images"] == 2 and p["threads"] == 2 and p["prefetch_mb"] == budget
  assert 0 < p["rss_before_mib"] <= p["peak_rss_process_mib"]  # VmHWM: the whole process's peak
  assert "read-ahead 2 images, 2 threads  peak RSS" in r.stdout and "per core / bare" in r.stdout
  # the photos: 10 class folders of 500 x 375 / 375 x 500 JPEGs
  from PIL import Image
  folders = sorted(d for d in (tmp_path / "images").iterdir() if d.is_dir())
  assert [f.name for f in folders] == [f"class{c}" for c in range(10)]
  sizes = {Image.open(f).size for d in folders for f in d.iterdir()}
  assert sizes <= {(500, 375), (375, 500)} and (500, 375) in sizes
  d = res["decode"]
  assert d["min_side"] == 18 and d["images"] == 20
  for name in ("pil_full", "pil_draft", "simplejpeg"):
    assert d[name]["img_per_s"] > 0 and d[name]["with_fit_img_per_s"] > 0, name
    assert f"decode {name}:" in r.stdout
  assert d["pil_full"]["decoded_short_side"] == 375  # full size; the others at 1/8: 47
  assert d["pil_draft"]["decoded_short_side"] == d["simplejpeg"]["decoded_short_side"] == 47


@pytest.mark.long
def test_score_stage_bench_counts_decodes_and_projects(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run([sys.executable, "-m", "pca_jax.speedbench", "--what=score_stage",
                      "--model=resnet10", "--width=4", "--size=16", "--batch=8", "--n_images=40",
                      "--models=2", "--threads=2", f"--data_dir={tmp_path / 'images'}",
                      "--host_cores=16", "--device_img_per_s=15000", f"--out={out}"], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  s = json.loads(out.read_text())["results"]["score_stage"]
  assert s["images_decoded_training"] == 40 and s["images_decoded"] == 80  # 1 epoch + scoring
  assert s["model_images_trained"] == 80 and s["model_img_per_s_training"] > 0
  p = s["projection"]
  assert p["device_train_img_per_s"] == 15000 * (224 / 16) ** 2
  assert p["together"]["decodes"] == 10 * 1_281_167 + 1_281_167
  assert p["separate"]["decodes"] == 2 * 10 * 1_281_167 + 1_281_167
  assert "ImageNet together" in r.stdout


def test_project_score_stage_by_hand():
  from pca_jax.speedbench import project_score_stage
  p = project_score_stage(1000, 10, 4, True, host_img_per_s=500, device_train_img_per_s=3000)
  assert p["decodes"] == 11_000 and p["host_s"] == 22.0
  assert p["model_images"] == pytest.approx(40_000 + 4000 / 3)
  assert p["device_s"] == pytest.approx(p["model_images"] / 3000) and p["bound"] == "host"
  assert p["wall_s"] == 22.0
  q = project_score_stage(1000, 10, 4, False, host_img_per_s=500, device_train_img_per_s=3000)
  assert q["decodes"] == 41_000 and q["wall_s"] == 82.0
