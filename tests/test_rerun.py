"""Trustworthy reruns of the whole PCA pipeline: a changed config never reports an old model."""

import json

import numpy as np
import pytest

from pca_jax import main as pca_main
from tests.test_main import tiny_config

STAGES = ("score", "select", "combine", "store", "train", "eval", "report")


def _steps(wd):
  rows = [json.loads(line) for line in (wd / "train" / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if "loss" in r]


def _run(cfg, wd, capsys):
  capsys.readouterr()
  pca_main.run_pipeline(cfg, wd)
  return capsys.readouterr().out


def _assert_retrained_on(wd, out, stored_images):
  """The train stage ran from step 0 on the current set, and the report says so."""
  assert "[train] running" in out and "[train] resumed" not in out
  cfg_steps = json.loads((wd / "train.json").read_text())["steps"]
  steps = _steps(wd)
  assert steps[0] == 10 and steps[-1] == cfg_steps and steps == sorted(steps)  # one fresh run
  train = json.loads((wd / "train.json").read_text())
  assert train["train_loss"] is not None and np.isfinite(train["train_loss"])
  res = json.loads((wd / "results.json").read_text())
  assert res["stored_images"] == stored_images and res["train_loss"] == train["train_loss"]
  manifest = json.loads((wd / "compressed" / "manifest.json").read_text())
  assert manifest["num_images"] == stored_images
  assert res["top1"] == json.loads((wd / "eval.json").read_text())["eval_top1"]


@pytest.fixture
def finished(finished_run):
  return finished_run  # the session's finished tiny run (tests/conftest.py); copied before use


@pytest.mark.long
def test_changed_ipc_grid_or_scoring_retrains_from_step_zero(finished, tmp_path, capsys):
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(finished, wd)
  first = json.loads((wd / "results.json").read_text())
  assert first["stored_images"] == 40

  out = _run(tiny_config(**{"select.ipc": 2}), wd, capsys)  # the report: IPC 10 -> 5
  assert "[score] already done" in out and "[select] rerunning: config changed (select.ipc)" in out
  _assert_retrained_on(wd, out, 20)

  out = _run(tiny_config(**{"select.ipc": 2, "combine.grid": (1, 1)}), wd, capsys)
  assert "[select] rerunning: config changed (combine.grid)" in out
  _assert_retrained_on(wd, out, 20)
  assert json.loads((wd / "compressed" / "manifest.json").read_text())["grid"] == [1, 1]

  out = _run(tiny_config(**{"select.ipc": 2, "combine.grid": (1, 1),
                            "score.train.epochs": 2}), wd, capsys)
  assert "[score] rerunning: config changed (score.train.epochs)" in out
  assert "[score models 1-2 together] resumed" not in out  # the scoring models start over too
  assert "[score models 1-2 together] step" in out
  for stage in STAGES[1:]:
    assert f"[{stage}] running" in out, stage
  _assert_retrained_on(wd, out, 20)


def test_force_retrains_and_unchanged_rerun_skips_everything(finished, tmp_path, capsys):
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(finished, wd)
  out = _run(tiny_config(), wd, capsys)
  for stage in STAGES:
    assert f"[{stage}] already done" in out, stage
  out = _run(tiny_config(stages="train,eval,report", force=True), wd, capsys)
  assert "[train] rerunning: --config.force=True" in out
  _assert_retrained_on(wd, out, 40)


def test_report_states_the_protocol_from_the_config(finished, tmp_path, capsys):
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(finished, wd)
  _run(tiny_config(**{"train.resolution": "patch", "train.crop": "rrc", "train.epochs": 2}), wd,
       capsys)
  md = (wd / "results.md").read_text()
  assert "hard labels, random-resized crops of the whole stored image" in md
  assert "patch resolution" in md and "patch-constrained" not in md
  res = json.loads((wd / "results.json").read_text())
  assert (res["labels"], res["crop"], res["resolution"]) == ("hard", "rrc", "patch")


def test_only_current_stages_are_reported(finished, tmp_path, capsys):
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(finished, wd)
  # a new ipc, but only select,report run: the old set, model and number must not be reported
  _run(tiny_config(stages="select,report", **{"select.ipc": 3}), wd, capsys)
  res = json.loads((wd / "results.json").read_text())
  assert res["top1"] is None and res["stored_images"] is None and res["train_loss"] is None
  assert "Not reported (not run, or made under another config): combine, store, train, eval" \
      in (wd / "results.md").read_text()
  assert not (wd / "compressed").exists() and not (wd / "train").exists()
