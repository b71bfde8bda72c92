"""The README a newcomer reads: at most 250 lines, and no dead relative link in it or in docs/
(every linked file exists; every #anchor is a heading of its file, by GitHub's slug rules)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[str]:
  docs = os.path.join(ROOT, "docs")
  return [os.path.join(ROOT, "README.md")] + sorted(
      os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to '-'."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: str) -> set[str]:
  out, seen, fence = set(), {}, False
  for line in open(path, encoding="utf-8"):
    if line.startswith("```"):
      fence = not fence
    if fence or not line.startswith("#"):
      continue
    slug = _slug(line.lstrip("#"))
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def test_readme_is_short():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) <= 250


def test_slugs_follow_githubs_rules():
  assert _slug("Object stores") == "object-stores"
  assert _slug("Final and best top-1 / DD-Ranking") == "final-and-best-top-1--dd-ranking"
  assert _slug("`pca_auto`: the tune stage") == "pca_auto-the-tune-stage"


def test_every_relative_link_resolves():
  dead = []
  for page in _pages():
    text = open(page, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links in code blocks are not links
    for target in LINK.findall(text):
      if re.match(r"[a-z]+:", target):  # http(s)://, mailto: ...
        continue
      file_part, _, anchor = target.partition("#")
      path = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part \
          else page
      where = os.path.relpath(page, ROOT)
      if not os.path.exists(path):
        dead.append(f"{where}: {target} (no such file)")
      elif anchor and path.endswith(".md") and anchor not in _anchors(path):
        dead.append(f"{where}: {target} (no such heading)")
  assert not dead, "\n".join(dead)
