"""Two real processes on 127.0.0.1 (jax.distributed, 4 fake CPU devices each), started by
launch/gpu_multi_host.sh: the tiny pipeline agrees with one process of 8 devices, every file has
one writer, and a SIGTERM to one process stops both at the same step with one checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict

import jax
import numpy as np
import pytest

from pca_jax import main as pca_main
from pca_jax.training import load_variables
from tests.helpers import cache_arg, free_port
from tests.test_main import ROOT, TINY, tiny_config

LAUNCH = os.path.join(ROOT, "launch", "gpu_multi_host.sh")
# the launch script adds bfloat16 (GPU); these CPU runs and the 1-process reference use float32
ARGS = [*TINY, cache_arg(), "--config.model.dtype=float32"]


def _start(workdir, extra, audit, tag, logdir=None):
  """Both processes of one launch; returns [(Popen, log path)] for process 0 and 1."""
  port = free_port()
  procs = []
  for pid in (0, 1):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                                    "--xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu", COORDINATOR=f"127.0.0.1:{port}", NUM_PROCESSES="2",
               PROCESS_ID=str(pid), CONFIG="configs/demo.py", WORKDIR=str(workdir),
               VENV=os.path.dirname(os.path.dirname(sys.executable)), PYTHONPATH=ROOT,
               PCA_JAX_WRITE_AUDIT=str(audit))
    log = (logdir or workdir.parent) / f"{tag}-p{pid}.log"
    procs.append((subprocess.Popen(["bash", LAUNCH, *ARGS, *extra], env=env, cwd=ROOT,
                                   stdout=open(log, "w"), stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs, timeout=600):
  codes = []
  for p, log in procs:
    try:
      codes.append(p.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      raise AssertionError(f"timed out; {log}:\n{log.read_text()[-3000:]}")
  return codes


def _writers(audit) -> dict[str, set[str]]:
  out = defaultdict(set)
  for line in audit.read_text().splitlines():
    pid, path = line.split("\t", 1)
    out[path].add(pid)
  return out


def _params(workdir):
  return jax.tree.leaves(load_variables(workdir / "train")["params"])


def test_launch_scripts_parse():
  for script in sorted(os.listdir(os.path.join(ROOT, "launch"))):
    if script.endswith(".sh"):
      out = subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)],
                           capture_output=True, text=True)
      assert out.returncode == 0, (script, out.stderr)


@pytest.mark.long
def test_two_processes_match_one_and_survive_sigterm(tmp_path):
  # reference: one process, 8 devices (this test process)
  ref = tmp_path / "one"
  pca_main.run_pipeline(tiny_config(), ref)

  # the same pipeline, two processes x 4 devices, through the launch script
  wd, audit = tmp_path / "two", tmp_path / "audit.tsv"
  codes = _wait(_start(wd, [], audit, "two"))
  logs = [(tmp_path / f"two-p{i}.log").read_text() for i in (0, 1)]
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "2 processes" in logs[0] and "[eval] top-1" in logs[0]
  assert "[eval]" not in logs[1] and "pca_jax: stages" not in logs[1]  # quiet by default

  np.testing.assert_array_equal(np.load(wd / "selected.npy"), np.load(ref / "selected.npy"))
  top1 = [json.loads((d / "eval.json").read_text())["eval_top1"] for d in (ref, wd)]
  # same data order and keys; only the cross-process reduction order differs
  assert abs(top1[0] - top1[1]) <= 3.0, top1

  writers = _writers(audit)
  assert writers and all(p == {"0"} for p in writers.values()), \
      {k: v for k, v in writers.items() if v != {"0"}}
  written = {os.path.relpath(p, wd) for p in writers}
  for f in ("selected.npy", "labels.npy", "scores.npy", "combine", "compressed", "train.json",
            "eval.json", "results.md", "stages/train.json", "train/metrics.jsonl"):
    assert f in written, f

  # SIGTERM to process 1 in the middle of a (forced) retrain of the same student
  wd2 = tmp_path / "preempt"
  shutil.copytree(wd, wd2, ignore=shutil.ignore_patterns("run.lock", "train"))
  procs = _start(wd2, ["--config.stages=train", "--config.force=True",
                       "--config.train.log_every_steps=2"], tmp_path / "audit2.tsv", "sig")
  metrics = wd2 / "train" / "metrics.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline:
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    if any(r.get("step", 0) >= 6 for r in rows) or any(p.poll() is not None for p, _ in procs):
      break
    time.sleep(0.2)
  procs[1][0].send_signal(signal.SIGTERM)
  codes = _wait(procs)
  logs = [log.read_text() for _, log in procs]
  assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
  steps = sorted(int(p.name) for p in (wd2 / "train" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert len(steps) == 1 and 6 <= steps[0] < 40, steps  # one checkpoint, mid-train
  assert f"checkpoint saved at step {steps[0]}/40" in logs[0]

  codes = _wait(_start(wd2, ["--config.stages=train"], tmp_path / "audit3.tsv", "resume"))
  resumed = (tmp_path / "resume-p0.log").read_text()
  assert codes == [0, 0], resumed[-3000:]
  assert f"resumed from checkpoint at step {steps[0]}/40" in resumed
  for a, b in zip(_params(wd), _params(wd2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_a_failure_on_process_0_stops_both(tmp_path):
  """Host-side work runs on process 0 only; when it fails there, the other process must not wait
  forever at the next collective: both exit 2 with one line."""
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  start = time.time()
  procs = _start(blocker / "run", [], tmp_path / "audit.tsv", "fail", logdir=tmp_path)
  codes = _wait(procs, timeout=300)
  logs = [log.read_text() for _, log in procs]
  assert codes == [2, 2], logs[0][-2000:] + logs[1][-2000:]
  assert "error: cannot write to" in logs[0]
  assert "error: checking the run directory failed on process 0" in logs[1]
  assert time.time() - start < 120  # no hang until a coordination timeout
