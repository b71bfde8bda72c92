"""The stage runner on toy stages: skip, rerun, force, invalidation, resume, refusals, the lock."""

import json
import os
import signal
import subprocess
import sys

import ml_collections
import pytest

from pca_jax.config import changed_fields, config_values, fingerprint
from pca_jax.runner import RunLock, Runner, Stage
from tests.helpers import set_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**over):
  c = ml_collections.ConfigDict(dict(a=1, b=ml_collections.ConfigDict(dict(x=2, num_threads=4)),
                                     c=3))
  return set_fields(c, over)


class Toy:
  """Stages that write a file with their inputs and count their executions."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.calls = []
    self.fail_in = None

  def stage(self, name, reads=()):
    def run(ctx, stage_run):
      self.calls.append(name)
      if self.fail_in == name:
        raise RuntimeError(f"injected failure in {name}")
      text = name + "".join(f"<{(self.workdir / f'{r}.txt').read_text()}>" for r in reads)
      (self.workdir / f"{name}.txt").write_text(text)
      (self.workdir / f"{name}_dir").mkdir(exist_ok=True)
      return {"fingerprint": stage_run.fingerprint, "upstream": sorted(stage_run.upstream)}
    return run

  def stages(self):
    return [Stage("one", self.stage("one"), fields=("a",), owns=("one.txt", "one_dir")),
            Stage("two", self.stage("two", ("one",)), fields=("b",), needs=("one",),
                  owns=("two.txt", "two_dir")),
            Stage("three", self.stage("three", ("two",)), fields=("c",), needs=("two",),
                  owns=("three.txt",)),
            Stage("summary", self.stage("summary"), uses=("one", "two", "three"),
                  owns=("summary.txt",))]


def _runner(tmp_path, toy, config, logs=None):
  return Runner(toy.stages(), config, tmp_path, None, (logs if logs is not None else []).append)


ALL = ["one", "two", "three", "summary"]


def test_fingerprint_and_config_values():
  c = _config()
  assert config_values(c, ("a", "b")) == {"a": 1, "b.x": 2}  # ignored leaves (threads) dropped
  assert fingerprint(config_values(c, ("b",))) == fingerprint(
      config_values(_config(**{"b.num_threads": 16}), ("b",)))
  assert fingerprint(1, "x") != fingerprint(1, "y") and len(fingerprint(1)) == 16
  assert changed_fields({"a": 1, "b.x": 2}, {"a": 1, "b.x": 3, "c": 0}) == ["b.x", "c"]


def test_unchanged_rerun_skips_everything(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(ALL)
  assert toy.calls == ALL
  logs = []
  _runner(tmp_path, toy, _config(), logs).run(ALL)
  assert toy.calls == ALL  # nothing ran again
  assert sum("already done" in line for line in logs) == 4
  # an ignored field changes nothing either
  _runner(tmp_path, toy, _config(**{"b.num_threads": 1})).run(ALL)
  assert toy.calls == ALL


def test_changed_field_reruns_the_stage_and_everything_that_reads_it(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(ALL)
  old_two = json.loads((tmp_path / "stages" / "two.json").read_text())
  logs = []
  toy.calls.clear()
  _runner(tmp_path, toy, _config(**{"b.x": 5}), logs).run(ALL)
  assert toy.calls == ["two", "three", "summary"]  # one is upstream: untouched
  assert any("[two] rerunning: config changed (b.x)" in line for line in logs)
  new_two = json.loads((tmp_path / "stages" / "two.json").read_text())
  assert new_two["id"] != old_two["id"] and new_two["fingerprint"] != old_two["fingerprint"]
  three = json.loads((tmp_path / "stages" / "three.json").read_text())
  assert three["upstream"] == {"two": new_two["id"]}


def test_rerunning_a_stage_alone_removes_the_stale_outputs_downstream(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(ALL)
  (tmp_path / "two_dir" / "checkpoint").write_text("old model")
  _runner(tmp_path, toy, _config(a=7)).run(["one"])
  # two and three read one: their outputs, checkpoints and markers are gone, not left stale
  for gone in ("two.txt", "two_dir", "three.txt", "summary.txt", "stages/two.json",
               "stages/three.json", "stages/summary.json"):
    assert not (tmp_path / gone).exists(), gone
  assert (tmp_path / "one.txt").exists()


def test_force_reruns_and_invalidates_dependents(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(ALL)
  toy.calls.clear()
  logs = []
  _runner(tmp_path, toy, _config(), logs).run(["two", "three"], force=True)
  assert toy.calls == ["two", "three"]
  assert any("[two] rerunning: --config.force=True" in line for line in logs)
  # summary read two's old output: it is stale now, and reruns on the next full run
  assert not (tmp_path / "stages" / "summary.json").exists()
  toy.calls.clear()
  _runner(tmp_path, toy, _config()).run(ALL)
  assert toy.calls == ["summary"]


def test_missing_or_stale_inputs_are_refused_before_anything_runs(tmp_path):
  toy = Toy(tmp_path)
  with pytest.raises(ValueError, match="stage two needs the output of stage one, which this run "
                                       "directory does not have; add one to --config.stages"):
    _runner(tmp_path, toy, _config()).run(["two", "three"])
  assert toy.calls == [] and not (tmp_path / "stages").exists()
  _runner(tmp_path, toy, _config()).run(ALL)
  toy.calls.clear()
  with pytest.raises(ValueError, match=r"needs the output of stage one, which was made under "
                                       r"another config \(changed: a\)"):
    _runner(tmp_path, toy, _config(a=2)).run(["two"])
  assert toy.calls == []


def test_uses_reports_only_current_outputs(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(["one", "two", "summary"])
  summary = json.loads((tmp_path / "stages" / "summary.json").read_text())["summary"]
  assert summary["upstream"] == ["one", "two"]  # three does not exist: not reported
  toy.calls.clear()
  _runner(tmp_path, toy, _config(**{"b.x": 9})).run(["summary"])
  summary = json.loads((tmp_path / "stages" / "summary.json").read_text())["summary"]
  assert toy.calls == ["summary"] and summary["upstream"] == ["one"]  # two is stale now


def test_interrupted_stage_resumes_with_its_outputs_unless_the_config_changed(tmp_path):
  toy = Toy(tmp_path)
  _runner(tmp_path, toy, _config()).run(["one"])
  toy.fail_in = "two"
  with pytest.raises(RuntimeError, match="injected"):
    _runner(tmp_path, toy, _config()).run(["two"])
  marker = json.loads((tmp_path / "stages" / "two.json").read_text())
  assert marker["status"] == "running"
  (tmp_path / "two_dir").mkdir()
  (tmp_path / "two_dir" / "partial").write_text("progress to resume from")
  toy.fail_in = None
  logs = []
  _runner(tmp_path, toy, _config(), logs).run(["two"])
  assert any("[two] resuming an unfinished run" in line for line in logs)
  assert (tmp_path / "two_dir" / "partial").exists()  # kept for the resume
  # the same interruption under another config starts clean
  toy.fail_in = "two"
  with pytest.raises(RuntimeError):
    _runner(tmp_path, toy, _config(**{"b.x": 3})).run(["two"])
  (tmp_path / "two_dir").mkdir(exist_ok=True)
  (tmp_path / "two_dir" / "partial").write_text("progress of the b.x=3 run")
  toy.fail_in = None
  _runner(tmp_path, toy, _config(**{"b.x": 4})).run(["two"])
  assert not (tmp_path / "two_dir" / "partial").exists()


def test_check_runs_for_every_scheduled_stage_before_the_first(tmp_path):
  toy = Toy(tmp_path)
  stages = toy.stages()

  def refuse(ctx):
    raise ValueError("budget too large for the smallest class")
  stages[2] = Stage("three", toy.stage("three", ("two",)), fields=("c",), needs=("two",),
                    check=refuse)
  with pytest.raises(ValueError, match="budget too large"):
    Runner(stages, _config(), tmp_path, None, lambda s: None).run(ALL)
  assert toy.calls == []


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from pca_jax.runner import RunLock
lock = RunLock({wd!r}).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_run_lock_refuses_a_second_run_and_takes_over_a_dead_one(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, wd=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=rf"run directory {tmp_path} is in use by pid "
                                         rf"{holder.pid} on .* since .*; wait for that run"):
      RunLock(tmp_path).acquire()
    # the CLI: one line, exit 2, nothing written
    out = subprocess.run([sys.executable, "-m", "pca_jax.main", "--config=configs/demo.py",
                          f"--workdir={tmp_path}", "--config.stages=select",
                          "--config.select.mode=random"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0 and f"in use by pid {holder.pid}" in out.stderr
    assert not (tmp_path / "selected.npy").exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  logs = []
  lock = RunLock(tmp_path, logs.append).acquire()
  assert logs and f"took over the lock of pid {holder.pid}" in logs[0]
  assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert (tmp_path / "run.lock").read_text() == ""  # a clean release leaves nothing to take over
  logs.clear()
  RunLock(tmp_path, logs.append).acquire().release()
  assert logs == []
