"""Make this checkout's working tree small enough to travel to a device call, and put it back.

A device call sends the checkout's tracked and untracked-not-ignored files (64 MiB in all, with
the carried paths). Eleven model files are tracked (115 MB): every lossy rate point ever shipped
and both MGCF models, kept so that files made with them still decode. A GPU session needs one of
them: the default MGCF model (``codec/models/DEFAULT``), or for ``--codec cca`` the rate point it
trains from. So ``slim`` takes the others out of git's index (``git rm --cached``: the files stay
on disk, untouched) and ignores them in ``.git/info/exclude``, inside a marked block; ``restore``
puts the index entries back from HEAD and removes the block. What was taken out is listed in
``.git/callic-device-slim.json``, so ``restore`` undoes exactly that; a second ``slim`` restores the first.

While slim, ``git status`` shows the models as staged deletions: do not commit then (``restore``
first). Nothing here touches a file's bytes, HEAD or any branch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = "codec/models"
BEGIN = "# callic device slim: begin (bench/device_tree.py restore removes this block)"
END = "# callic device slim: end"
STATE = "callic-device-slim.json"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def git_dir(repo: Path) -> Path:
    return Path(git(repo, "rev-parse", "--absolute-git-dir").strip())


def tracked_models(repo: Path) -> list[str]:
    return sorted(n for n in git(repo, "ls-files", "--", f"{MODELS}/*.safetensors").splitlines() if n)


def rate_point(repo: Path, lmbda: float) -> str:
    """The shipped lossy rate point (``codec/models/CCA``) trained for ``lmbda``."""
    from safetensors import safe_open

    names = [n.strip() for n in (repo / MODELS / "CCA").read_text().splitlines() if n.strip()]
    for name in names:
        with safe_open(str(repo / MODELS / name), framework="numpy") as f:
            if float((f.metadata() or {}).get("lmbda", "nan")) == lmbda:
                return f"{MODELS}/{name}"
    raise SystemExit(f"device_tree: no shipped rate point has lambda {lmbda} ({', '.join(names)})")


def needed(repo: Path, codec: str, lmbda: float | None) -> set[str]:
    """The model files a GPU session of ``codec`` reads from the tree."""
    keep = {f"{MODELS}/{(repo / MODELS / 'DEFAULT').read_text().strip()}"}
    if codec == "cca" and lmbda is not None:
        keep.add(rate_point(repo, lmbda))
    return keep


def exclude_lines(text: str) -> list[str]:
    """The exclude file's lines outside our block."""
    out, inside = [], False
    for line in text.splitlines():
        if line == BEGIN:
            inside = True
        elif line == END:
            inside = False
        elif not inside:
            out.append(line)
    return out


def slim(repo: Path, codec: str = "callic", lmbda: float | None = None) -> list[str]:
    """Take the model files a session does not need out of the index; returns what it took out.
    An earlier slim is restored first, so that what this session needs is back in."""
    restore(repo)
    keep = needed(repo, codec, lmbda)
    removed = [n for n in tracked_models(repo) if n not in keep]
    if removed:
        git(repo, "rm", "--cached", "-q", "--", *removed)
    exclude = git_dir(repo) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude_lines(exclude.read_text() if exclude.is_file() else "")
    if removed:
        lines += [BEGIN, *(f"/{n}" for n in removed), END]
    exclude.write_text("".join(f"{line}\n" for line in lines))
    (git_dir(repo) / STATE).write_text(json.dumps(removed, indent=1))
    return removed


def restore(repo: Path) -> list[str]:
    """Put back what ``slim`` took out of the index; returns those paths."""
    state = git_dir(repo) / STATE
    removed = json.loads(state.read_text()) if state.is_file() else []
    if removed:
        git(repo, "reset", "-q", "HEAD", "--", *removed)
    exclude = git_dir(repo) / "info" / "exclude"
    if exclude.is_file():
        exclude.write_text("".join(f"{line}\n" for line in exclude_lines(exclude.read_text())))
    state.unlink(missing_ok=True)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["slim", "restore"])
    ap.add_argument("--repo", default=".")
    ap.add_argument("--codec", choices=["callic", "cca"], default="callic")
    ap.add_argument("--lmbda", type=float, help="with --codec cca: keep the rate point of this lambda")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    if args.action == "slim":
        removed = slim(repo, args.codec, args.lmbda)
        print(
            f"device_tree: {len(removed)} model files out of git's index (still on disk) until "
            "`python bench/device_tree.py restore`; do not commit before that"
        )
    else:
        removed = restore(repo)
        print(f"device_tree: {len(removed)} model files back in git's index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
