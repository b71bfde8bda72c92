"""Named, independent random streams.

Every random choice in pca_jax derives from a config seed and a purpose tag, so two purposes never
share a stream:
  * `derive_seed(seed, *tags)` gives unrelated integer seeds for the K scoring models, the teacher,
    the student, each benchmark cell (not seed, seed + 1, ...: consecutive seeds made model k's
    epoch e + 1 replay model k + 1's epoch e under Grain's `seed + epoch` reshuffling);
  * within one model, `stream_key(seed, name)` splits the PRNG into an "init" stream (parameters),
    a "data" stream (the order of the examples) and an "augment" stream (crops, flips, CutMix) by
    `jax.random.fold_in` tags, and `host_rng(seed, name, *ints)` gives the matching numpy streams for
    host-side work (Grain's epoch permutations, random-resized crops of decoded images).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

STREAMS = {"init": 1, "data": 2, "augment": 3}


def derive_seed(seed: int, *tags: str | int) -> int:
  """A 31-bit seed for (seed, *tags) by SHA-256: different tags or seeds give unrelated seeds."""
  text = json.dumps([int(seed), *[t if isinstance(t, str) else int(t) for t in tags]])
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _stream_tag(name: str) -> int:
  if name not in STREAMS:
    raise ValueError(f"unknown random stream {name!r}; choose one of {sorted(STREAMS)}")
  return STREAMS[name]


def stream_key(seed: int, name: str):
  """The jax PRNG key of one stream of a model seeded `seed`: fold_in(key(seed), tag(name))."""
  import jax
  return jax.random.fold_in(jax.random.key(int(seed)), _stream_tag(name))


def host_rng(seed: int, name: str, *ints: int) -> np.random.Generator:
  """A numpy generator for (seed, stream name, *ints), e.g. ints = (epoch,) or (step, position)."""
  return np.random.default_rng([int(seed), _stream_tag(name), *[int(i) for i in ints]])
