"""The run folder: one run per folder, locked by one process, its recipe and data recorded, never mixed or deleted
silently; extended when only ``max_steps`` (or ``epochs``) grew; a full disk named as such."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError, latest_valid_checkpoint, list_checkpoints, recover_staging, write_json_atomic
from .recipe import Recipe

RUN_FILE = "run.json"


class RunDirError(RuntimeError):
    """The output folder holds another run, or another process is using it."""


class DiskFullError(RuntimeError):
    """The disk holding the run folder filled up while the run was writing to it."""


def _disk_full(error: BaseException, run_dir: Path) -> bool:
    """Whether ``error`` is a write that failed for lack of space (``ENOSPC``, or torch's C++ stream error on a disk
    with no space left)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(error) or "os error 28" in str(error):  # safetensors' Rust writer
        return True
    if isinstance(error, RuntimeError) and ("iostream" in str(error) or "write" in str(error).lower()):
        try:
            return shutil.disk_usage(run_dir).free < 16 * 2**20
        except OSError:
            return False
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and _disk_full(cause, run_dir)


@contextlib.contextmanager
def naming_a_full_disk(run_dir: Path):
    """Turn whatever a writer raises for a full disk into one :class:`DiskFullError` that says so, where, and
    which checkpoint is intact."""
    try:
        yield
    except Exception as error:  # writers differ in what they raise for a full disk
        if not _disk_full(error, run_dir):
            raise
        intact = latest_valid_checkpoint(run_dir, warn=lambda *a: None)
        raise DiskFullError(
            f"the disk holding {run_dir} is full ({shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free): a file "
            f"could not be written ({type(error).__name__}: {str(error)[:80]}). "
            + (f"{intact.name} is intact; " if intact else "")
            + "free some space, then continue with --resume"
        ) from error


LOCK_FILE = ".smoa.lock"
_LOCKS: dict[str, int] = {}  # run folder → the open, flock-ed lock file of this process


def lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's exclusive lock (``flock`` on ``.smoa.lock``, which records the holder's pid).

    The kernel drops the lock when its process dies, so a lock left by a killed run never blocks the next one.

    Raises:
        RunDirError: another live process holds it (named by its pid).
    """
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(
            f"run folder {run_dir} is in use by process {holder}; wait for it to finish, or stop it and resume"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[key] = fd


def unlock_run_dir(run_dir: Path) -> None:
    fd = _LOCKS.pop(str(run_dir.resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def prepare_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> Path:
    """Create or check the run folder and take its lock: never mix two runs (or two processes) in one folder,
    never delete one silently."""
    run_dir = Path(recipe.run_dir)
    run_file = run_dir / RUN_FILE
    if int(os.environ.get("RANK", "0")) != 0:
        return run_dir  # in a distributed launch the main process checks and creates the folder
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"recipe key output_dir: {run_dir} is a file, not a folder; choose a folder for the run")
    existed = run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
    try:
        lock_run_dir(run_dir)
    except OSError as error:
        raise RunDirError(
            f"recipe key output_dir: cannot create the run folder {run_dir} ({error.strerror}); choose a folder "
            "you can write to"
        ) from None
    try:
        _check_run_dir(recipe, run_dir, run_file, existed, resume, overwrite)
    except BaseException:
        unlock_run_dir(run_dir)
        raise
    return run_dir


def data_digest(recipe: Recipe) -> str | None:
    """SHA-256 of the training data the recipe names (``train_file``: a file's bytes, or a folder's files, each by
    relative path and bytes); None for the packaged data, which is versioned with its package. A run records it, so
    data edited between a run and its ``--resume`` is caught: the recipe's fingerprint hashes the path only."""
    if not recipe.train_file:
        return None
    path = Path(recipe.train_file).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return None  # missing data is named where it is read
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def check_finished_run(recipe: Recipe, run_dir: Path) -> None:
    """A finished run folder may stand for ``recipe`` only if its ``run.json`` records this recipe's fingerprint and
    training data; :class:`RunDirError` names the differing settings or the changed data otherwise."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise RunDirError(f"{run_dir} holds results.json but no {RUN_FILE}; it is not a smoa run: move it away")
    saved = json.loads(run_file.read_text())
    if saved.get("fingerprint") != recipe.fingerprint():
        keys = ", ".join(f"{k} {b!r} → {n!r}" for k, (b, n) in recipe.differences(saved.get("recipe", {})).items())
        raise RunDirError(
            f"{run_dir} holds a finished run with other settings ({keys or 'other settings'}); restore the study "
            "file, or move the run folder away so it is trained again"
        )
    data = data_digest(recipe)
    if saved.get("data_sha256") not in (None, data):
        raise RunDirError(
            f"{run_dir} holds a finished run trained on other data (train_file {recipe.train_file} has changed); "
            "restore the file, or move the run folder away so it is trained again"
        )


def _run_record(recipe: Recipe, data: str | None, **extra: Any) -> dict[str, Any]:
    record = {"fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict(), **extra}
    return record if data is None else {**record, "data_sha256": data}


def _check_run_dir(recipe: Recipe, run_dir: Path, run_file: Path, existed: bool, resume: bool, overwrite: bool):
    data = data_digest(recipe)
    if existed:
        if overwrite:
            for child in run_dir.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif not run_file.is_file():
            raise RunDirError(
                f"output folder {run_dir} is not empty and holds no smoa run ({RUN_FILE}); choose another "
                "output_dir, or pass --overwrite to replace its contents"
            )
        else:
            saved = json.loads(run_file.read_text())
            untrained = not list_checkpoints(run_dir) and not (run_dir / "adapter").exists()
            if not untrained and saved.get("data_sha256") not in (None, data):
                raise RunDirError(
                    f"output folder {run_dir} holds a run trained on other data: train_file {recipe.train_file} has "
                    f"changed since (sha256 {saved['data_sha256'][:12]}… → {(data or 'none')[:12]}…); restore the "
                    "file, or choose another output_dir, or pass --overwrite to train afresh on the new data"
                )
            if saved.get("fingerprint") != recipe.fingerprint():
                differences = recipe.differences(saved.get("recipe", {}))
                if untrained:  # stopped before its first checkpoint (bad data, a model that did not load)
                    write_json_atomic(run_file, _run_record(recipe, data))
                elif longer_run(differences) and resume:
                    extend_run(recipe, run_dir, run_file, differences, saved, data)
                else:
                    keys = ", ".join(f"{k} {before!r} → {now!r}" for k, (before, now) in differences.items())
                    hint = " pass --resume to train it further;" if longer_run(differences) else ""
                    raise RunDirError(
                        f"output folder {run_dir} holds a different run ({keys or 'other settings'});{hint} choose "
                        "another output_dir, or pass --overwrite to replace it"
                    )
            elif not resume and not untrained:
                raise RunDirError(
                    f"output folder {run_dir} already holds this run; pass --resume to continue it or --overwrite "
                    "to start again"
                )
    if not run_file.is_file():
        write_json_atomic(run_file, _run_record(recipe, data))
    elif data is not None and "data_sha256" not in (record := json.loads(run_file.read_text())):
        write_json_atomic(run_file, {**record, "data_sha256": data})  # a run from before data was recorded
    recover_staging(run_dir / "adapter", warn=print)


def longer_run(differences: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the only difference from a saved run is more training: a larger ``max_steps`` (or, without a step
    limit, more ``epochs``)."""
    if set(differences) == {"max_steps"}:
        before, now = differences["max_steps"]
        return before != -1 and (now == -1 or now > before)
    if set(differences) == {"epochs"}:
        before, now = differences["epochs"]
        return now > before
    return False


def extend_run(
    recipe: Recipe, run_dir: Path, run_file: Path, differences, saved: dict[str, Any], data: str | None = None
) -> None:
    """Let ``--resume`` train a run further: its finished ``adapter/`` and ``results.json`` are kept beside it as
    ``adapter-step<N>`` / ``results-step<N>.json``, and ``run.json`` records the longer run."""
    [(key, (before, now))] = differences.items()
    kept = list_checkpoints(run_dir)
    if not kept:
        raise RunDirError(f"output folder {run_dir} holds no checkpoint to train further from; pass --overwrite")
    steps = checkpoint_step(kept[-1])
    for name, kept in (("adapter", f"adapter-step{steps}"), ("results.json", f"results-step{steps}.json")):
        if (run_dir / name).exists() and not (run_dir / kept).exists():
            os.replace(run_dir / name, run_dir / kept)
    history = [*saved.get("extended_from", []), {"step": steps, key: before}]
    write_json_atomic(run_file, _run_record(recipe, data, extended_from=history))
    print(
        f"extending {run_dir} from step {steps} ({key} {before} → {now}); the learning-rate schedule is recomputed "
        f"for the longer run; the adapter of the shorter run is kept in {run_dir / f'adapter-step{steps}'}"
    )


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The optimizer step a Trainer checkpoint was written at (its ``trainer_state.json``)."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(path.read_text())["global_step"])
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint state {path} is unreadable ({err}); the checkpoint is corrupted") from err
