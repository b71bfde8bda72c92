"""Experiment tracking (pca_jax.tracking): the TensorBoard event files of a demo run hold exactly
the scalars of its metrics.jsonl files (read back with tensorboard's own reader), a benchmark
cell's result with its hparams, and W&B's offline run files the same rows."""

import json
import os

import ml_collections
import numpy as np
import pytest

from tests.helpers import colour_dataset, colour_source, tiny_config


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the event files in logdir (tensorboard's reader)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _jsonl_scalars(path) -> dict[str, list[tuple[int, float]]]:
  from pca_jax.tracking import scalars_of
  out: dict[str, list] = {}
  for line in path.read_text().splitlines():
    row = json.loads(line)
    for tag, value in scalars_of(row).items():
      out.setdefault(tag, []).append((row["step"], value))
  return out


def _assert_same(events, expected):
  assert set(events) == set(expected), (sorted(events), sorted(expected))
  for tag, rows in expected.items():
    assert [s for s, _ in events[tag]] == [s for s, _ in rows], tag
    np.testing.assert_allclose([v for _, v in events[tag]], [v for _, v in rows], rtol=1e-6,
                               err_msg=tag)


def test_scalars_of_a_row():
  from pca_jax.tracking import scalars_of
  assert scalars_of({"step": 3, "epoch": 0.5, "loss": 1.5, "acc": 0.25, "lr": 1e-3,
                     "img_per_s": 10.0, "loss_per_model": [1.0, 2.0]}) == {
      "train/loss": 1.5, "train/acc": 0.25, "train/lr": 1e-3, "train/img_per_s": 10.0,
      "train/loss_model_0": 1.0, "train/loss_model_1": 2.0}
  assert scalars_of({"step": 8, "epoch": 1.0, "eval_top1": 40.0, "eval_top5": 90.0}) == {
      "eval/top1": 40.0, "eval/top5": 90.0}


def test_demo_run_event_files_equal_its_metrics_jsonl(finished_run):
  """The tiny demo pipeline (the session's finished run): the scoring models (per-model curves)
  and the student, each run's tensorboard/ against its metrics.jsonl."""
  logs = sorted(p.parent for p in finished_run.rglob("metrics.jsonl"))
  assert any(p.name == "train" for p in logs), logs
  for d in logs:
    assert (d / "tensorboard").is_dir(), d
    expected = _jsonl_scalars(d / "metrics.jsonl")
    assert "train/loss" in expected
    _assert_same(_events(d / "tensorboard"), expected)
  student = _events(finished_run / "train" / "tensorboard")
  assert "eval/top1" in student and "train/lr" in student
  scoring = [d for d in logs if d.name != "train"]
  assert any("train/loss_model_1" in _jsonl_scalars(d / "metrics.jsonl") for d in scoring), scoring


def test_cell_result_has_hparams_and_off_switch(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from pca_jax.tracking import Tracker
  log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))
  t = Tracker(tmp_path / "cell", log, name="random-ipc10-hard-s0")
  t.result({"method": "random", "ipc": 10, "label": "hard", "seed": 0, "grid": "1x1"},
           {"benchmark/top1": 12.5, "benchmark/best_top1": 13.0}, 40)
  t.close()
  assert _events(tmp_path / "cell" / "tensorboard") == {
      "benchmark/top1": [(40, 12.5)], "benchmark/best_top1": [(40, 13.0)]}
  acc = EventAccumulator(str(tmp_path / "cell" / "tensorboard" / "hparams"))
  acc.Reload()
  assert "_hparams_/session_start_info" in acc.summary_metadata  # the HPARAMS tab's session
  log.tensorboard = False
  t = Tracker(tmp_path / "off", log, name="x")
  t.row({"step": 1, "loss": 1.0})
  t.close()
  assert not (tmp_path / "off").exists()


def test_resumed_run_purges_the_steps_it_redoes(tmp_path):
  """A run resumed at step 2 of 4: TensorBoard shows one curve of steps 1-4 (purge_step)."""
  from pca_jax.tracking import Tracker
  log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))
  first = Tracker(tmp_path, log, name="r")
  for step in (1, 2, 3):
    first.row({"step": step, "loss": float(step)})
  first.close()
  second = Tracker(tmp_path, log, name="r", resume_step=2)
  for step in (3, 4):
    second.row({"step": step, "loss": 10.0 + step})
  second.close()
  assert _events(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 13.0),
                                                             (4, 14.0)]


def _wandb_records(path) -> list[bytes]:
  """The records of a W&B transaction log (<run>.wandb): a 7-byte header (":W&B", magic, version),
  then LevelDB's log format: 32 KiB blocks of records, each a 7-byte header (crc32, length, type:
  1 full, 2 first, 3 middle, 4 last) and its data, a block's tail of < 7 bytes zero-padded."""
  import struct
  buf = path.read_bytes()
  assert buf[:4] == b":W&B", buf[:7]
  block, pos, records, parts = 32768, 7, [], []
  while pos + 7 <= len(buf):
    room = block - pos % block
    if room < 7:
      pos += room
      continue
    _, length, kind = struct.unpack("<IHB", buf[pos:pos + 7])
    data, pos = buf[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 0 and length == 0:  # zero padding to the end of the block
      pos += block - pos % block if pos % block else 0
      continue
    parts.append(data)
    if kind in (1, 4):  # full / last: a record is complete
      records.append(b"".join(parts))
      parts = []
  return records


def _wandb_history(run_dir) -> list[dict]:
  """The history rows of an offline W&B run: its .wandb file's records, parsed with W&B's own
  protobufs (wandb_internal_pb2.Record)."""
  from wandb.proto import wandb_internal_pb2
  [path] = list(run_dir.glob("*.wandb"))
  rows = []
  for data in _wandb_records(path):
    rec = wandb_internal_pb2.Record()
    rec.ParseFromString(data)
    if rec.WhichOneof("record_type") == "history":
      rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in rec.history.item})
  return rows


def test_wandb_offline_mirrors_the_metrics(tmp_path, monkeypatch):
  pytest.importorskip("wandb")  # requirements-bench.txt (CI installs it; a skip fails CI)
  from pca_jax.training import InMemoryData, train
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path))
  cfg = ml_collections.ConfigDict({"model": dict(name="resnet10", width=4, stem="small",
                                                 dtype="float32"),
                                   "data": dict(eval_crop_fraction=1.0)})
  cfg.train = tiny_config(epochs=2, eval_every_epochs=1).train
  cfg.log = ml_collections.ConfigDict(dict(tensorboard=False, wandb_project="pca-jax-test"))
  images, labels = colour_dataset(32)
  train(cfg, tmp_path / "run", InMemoryData(images, labels, 4), colour_source(16), log=print)
  runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
  assert len(runs) == 1, os.listdir(tmp_path / "run")
  history = _wandb_history(runs[0])
  expected = _jsonl_scalars(tmp_path / "run" / "metrics.jsonl")
  for tag, rows in expected.items():
    got = [(h["_step"], h[tag]) for h in history if tag in h]
    assert [s for s, _ in got] == [s for s, _ in rows], tag
    np.testing.assert_allclose([v for _, v in got], [v for _, v in rows], rtol=1e-6)
