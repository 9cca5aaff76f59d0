"""Checkpoint integrity: a manifest of SHA-256 sums, written last and atomically, marks a checkpoint complete.

A checkpoint folder without a manifest was interrupted while being written (e.g. the process was killed) and is
never resumed from; a file whose sum differs from the manifest is corrupted and is named in the error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from smoa._io import write_json_atomic, write_text_atomic

__all__ = [
    "MANIFEST", "CheckpointError", "latest_valid_checkpoint", "list_checkpoints", "recover_staging",
    "save_dir_atomic", "verify_checkpoint", "write_json_atomic", "write_manifest", "write_text_atomic",
]  # fmt: skip
MANIFEST = "smoa_manifest.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or corrupted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(checkpoint: str | os.PathLike[str]) -> None:
    """Record the SHA-256 of every file under ``checkpoint``; call it after everything else is written."""
    root = Path(checkpoint)
    files = {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    write_json_atomic(root / MANIFEST, {"files": files})


def verify_checkpoint(checkpoint: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` naming the problem unless every file matches the manifest."""
    root = Path(checkpoint)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"checkpoint {root} is incomplete (no {MANIFEST}: it was interrupted while being written). "
            "Resume from an earlier checkpoint, or delete this folder."
        )
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint manifest {manifest} is unreadable ({err}); the checkpoint is corrupted"
        ) from err
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is corrupted")
        if sha256_file(path) != digest:
            raise CheckpointError(
                f"checkpoint file {path} is corrupted (its SHA-256 differs from {MANIFEST}). "
                "Resume from an earlier checkpoint, or delete this one."
            )


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """``checkpoint-<step>`` folders of a run, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_valid_checkpoint(run_dir: str | os.PathLike[str], warn=print) -> Path | None:
    """The newest intact checkpoint (complete and matching its manifest); newer ones that are incomplete (killed
    mid-write) or corrupted are skipped, each with a note saying why. None when no checkpoint is intact."""
    for checkpoint in reversed(list_checkpoints(run_dir)):
        if not (checkpoint / MANIFEST).is_file():
            warn(f"skipping {checkpoint}: incomplete (interrupted while being written)")
            continue
        try:
            verify_checkpoint(checkpoint)
        except CheckpointError as error:
            warn(f"skipping {checkpoint}: {error}")
            continue
        return checkpoint
    return None


def recover_staging(target: str | os.PathLike[str], warn=print) -> None:
    """Undo what a kill left of :func:`save_dir_atomic` next to ``target``: a previous folder moved aside while its
    replacement was not yet in place is moved back (nothing saved is lost); unfinished staging folders are removed."""
    target = Path(target)
    old = target.with_name(f".{target.name}-old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)
        warn(f"restored {target} (a save into it was interrupted)")
    for leftover in target.parent.glob(f".{target.name}-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            warn(f"removed {leftover}: an interrupted save's staging folder")


def save_dir_atomic(target: str | os.PathLike[str], write) -> None:
    """Call ``write(tmp_dir)`` on a fresh temporary folder next to ``target``, then move it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(str(staging))
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
