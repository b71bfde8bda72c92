"""The command line: runs PCA (Prune, Combine, Augment) and the DC benchmark as resumable stages.

  python -m pca_jax.main --config=configs/ipc50.py --workdir=runs/ipc50 [--config.train.epochs=5]

Stages (config.stages, comma-separated, always run in this order): score, teacher, tune, select,
combine, store, train, eval, benchmark, report. PCA (and tune): pca_jax/pca/; the DC benchmark
(teacher, benchmark): pca_jax/dc/; skip / resume / rerun decisions: pca_jax/runner.py. A finished
stage is skipped on rerun unless --config.force=True or what it depends on changed; then it and
every stage that reads it start from scratch. Bad input ends the run with one line on stderr and
exit code 2; SIGTERM saves a checkpoint and exits with code 143 (rerun to resume).
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local path or gs://bucket/path): every stage "
                    "reads and writes here.")
flags.DEFINE_bool("log_all_processes", False, "Multi-process runs: every process prints its "
                  "progress (default: process 0 only).")


def all_stages() -> list:
  """Every stage declaration, in pipeline order (config.STAGES)."""
  from pca_jax import dc, pca
  from pca_jax.config import STAGES
  declared = {s.name: s for s in (*pca.STAGES, *dc.STAGES)}
  return [declared[name] for name in STAGES]


def _open_sources(run, stages: list[str]) -> None:
  """Opens the datasets the stages read, so a missing or misconfigured dataset fails first."""
  if set(stages) & {"score", "teacher", "tune", "select", "combine", "store", "benchmark"}:
    run.train_source
  if set(stages) & {"teacher", "train", "eval", "benchmark"}:
    run.eval_source


def _preempt_on_sigterm():
  """One process: a SIGTERM outside a training loop (which installs its own handler, one that
  checkpoints first) raises Preempted, so the run lock is released and the run exits 143; the
  unfinished stage resumes on rerun. Several processes: JAX's preemption service owns SIGTERM
  (see training.loop.PreemptionWatch). Returns the previous handler, or None if none was set."""
  import threading
  import jax
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
    return None
  from pca_jax.training import Preempted

  def on_term(signum, frame):
    raise Preempted("received SIGTERM outside a training loop; rerun the same command to resume "
                    "the unfinished stage")
  return signal.signal(signal.SIGTERM, on_term)


def _remote_inputs(config) -> list[str]:
  """The object-store paths the run reads besides its run directory (data, teacher, sets,
  scores): each is checked up front with a bounded wait (fs.check_reachable)."""
  from pca_jax import fs
  from pca_jax.dc.stages import external_paths
  paths = [config.data.data_dir, config.benchmark.teacher_weights,
           config.benchmark.teacher_workdir, config.score.scores_path,
           *external_paths(config).values()]
  return [p for p in paths if p and fs.is_remote(p)]


def _check_run_directory(workdir, config) -> None:
  """The run directory is writable (process 0) and shared by every process; object stores
  answer within fs.STORE_TIMEOUT_S and have the settings their clients need."""
  from pca_jax import fs, parallel
  fs.check_store_settings(workdir)  # every process: no network, one line if a variable is missing
  for p in _remote_inputs(config):
    fs.check_reachable(p)
  parallel.on_writer(lambda: fs.check_writable(workdir), "checking the run directory")
  parallel.check_shared_directory(workdir)


def run_pipeline(config, workdir: str | os.PathLike) -> dict:
  """Runs the configured stages; returns {stage: summary}. Raises ValueError for bad input.
  With config.rehearse the config runs on synthetic data of its dataset's shape, a few steps per
  training run, after the real run's plan is printed (pca_jax.rehearsal)."""
  import jax
  from pca_jax import fs, parallel
  from pca_jax.checks import validate
  from pca_jax.config import parse_stages, use_compile_cache
  from pca_jax.pca.context import Run, log_main
  from pca_jax.runner import Runner, RunLock

  validate(config)
  plan = None
  if config.get("rehearse", False):
    from pca_jax import rehearsal
    config, *plan = rehearsal.prepare(config)
    validate(config)
  parallel.maybe_initialize_distributed()  # before anything asks jax which process this is
  writer = jax.process_index() == 0
  workdir = fs.path(workdir)
  existed = workdir.exists()
  _check_run_directory(workdir, config)
  if plan:
    log_main(plan[1])
  use_compile_cache(config)
  stages = parse_stages(config.stages)
  run = Run(config, workdir, log_main)
  runner = Runner(all_stages(), config, workdir, run, log_main, is_writer=writer,
                  barrier=parallel.barrier, on_writer=parallel.on_writer)
  try:
    _open_sources(run, stages)
    runner.plan(stages)  # missing or stale inputs, budgets: refused before anything is written
  except ValueError:
    # leave no empty local run directory behind (an empty prefix in a bucket does not exist)
    if writer and not existed and not fs.is_remote(workdir) and not any(workdir.iterdir()):
      fs.remove(workdir)
    raise
  lock = parallel.on_writer(lambda: RunLock(workdir, log_main).acquire(), "locking the run "
                            "directory")
  previous = _preempt_on_sigterm()
  try:
    fs.save_json(run.path("config.json"), config.to_dict())
    if plan:
      from pca_jax.rehearsal import write_plan
      write_plan(workdir, *plan)
    log_main(f"pca_jax: stages {','.join(stages)} -> {workdir}  ({jax.device_count()} "
             f"{jax.devices()[0].platform} devices, {jax.process_count()} processes)"
             + ("  [rehearsal]" if plan else ""))
    return runner.run(stages, force=config.force)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    if lock:
      lock.release()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from pca_jax.training import Preempted
  if FLAGS.log_all_processes:
    os.environ["PCA_JAX_LOG_ALL_PROCESSES"] = "1"
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    config = FLAGS.config
    if config is not None:
      config.to_dict()  # a config that failed to load raises on first use
  except OSError as e:  # the config file is missing or raised while loading
    first = " ".join(str(e).split())
    print(f"error: cannot load --config ({first[:300]})", file=sys.stderr)
    sys.exit(2)
  if config is None:
    print("error: --config is required, e.g. --config=configs/demo.py", file=sys.stderr)
    sys.exit(2)
  if not FLAGS.workdir:
    print("error: --workdir is required, e.g. --workdir=runs/demo", file=sys.stderr)
    sys.exit(2)
  try:
    run_pipeline(config, FLAGS.workdir)
  except Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)
  except ValueError as e:  # DataError and config errors: the message says what to fix
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad --config overrides (typos, wrong types)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "").replace("'", "").strip('"').split())
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" in {bad[-1] if len(bad) == 1 else 'a --config override'}" if bad else ""
    print(f"error: bad config{where}: {msg}; see the fields in configs/base.py and "
          "pca_jax/config.py", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
