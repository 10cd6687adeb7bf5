"""The Markdown docs: every relative link reaches a file (and a heading, for ``#anchor`` links),
and no tracked text file keeps a merge-conflict marker."""
import glob
import os
import re
import subprocess

from conftest import ROOT

DOCS = ["README.md", "experiments/README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
CODE_BLOCK = re.compile(r"```.*?```", re.S)


def anchor(heading):
  """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces '-'."""
  text = re.sub(r"[^\w\- ]", "", heading.strip("# ").replace("`", "").lower())
  return text.replace(" ", "-")


def anchors(path):
  text = CODE_BLOCK.sub("", open(path).read())
  return {anchor(line) for line in text.splitlines() if line.startswith("#")}


def test_relative_links_reach_files_and_headings():
  broken = []
  for doc in DOCS:
    text = CODE_BLOCK.sub("", open(os.path.join(ROOT, doc)).read())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target):
        continue
      path, _, name = target.partition("#")
      full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else \
          os.path.join(ROOT, doc)
      if not os.path.exists(full) or (name and full.endswith(".md") and name not in anchors(full)):
        broken.append(f"{doc}: {target}")
  assert not broken
  assert anchor("## Parity with `PyTorch`, 1-2") == "parity-with-pytorch-1-2"


def test_no_merge_conflict_markers():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  marked = []
  for name in files:
    if name.endswith((".py", ".md", ".cfg", ".txt", ".toml", ".html", ".ipynb")) or \
        name.startswith(".ci/"):
      text = open(os.path.join(ROOT, name), errors="replace").read()
      if re.search(r"^(<<<<<<< |>>>>>>> |=======$)", text, re.M):
        marked.append(name)
  assert not marked
