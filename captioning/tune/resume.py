"""What makes `captioning sweep --resume` lose nothing, whenever the driver was killed.

Ray Tune saves the sweep's state (the trials, the searcher, the callbacks) every few seconds
into a staging folder and copies it to the sweep's storage in the background; --resume reads
the copy. Three things could go wrong there, and are handled here:

1. Ray Tune's retention (`CheckpointConfig(num_to_keep)`) deleted a trial's previous
   checkpoint as soon as the driver registered the next one, while the saved state went on
   pointing at the previous one until a newer snapshot reached storage. A driver killed in
   between left a state pointing at a deleted checkpoint, and the trial failed on every retry
   ("Could not recover from checkpoint as it does not exist on storage anymore"). Now Ray
   keeps every checkpoint and `CheckpointKeeper` deletes one only once a whole snapshot taken
   after its trial registered a newer one has been kept (below).
2. A snapshot cut off mid-copy (its files are rewritten in place) made Ray Tune give up the
   restore and start the sweep afresh with no trial. `CheckpointKeeper` keeps the newest
   snapshot whose files are all whole in `.whole-state/`, and `repair_state` puts it back when
   the newest one on storage is not whole.
3. A trial's checkpoint gone anyway (deleted by hand, storage lost): the trial starts without
   it, and `train_trial` (tune/trainable.py) continues from the newest whole checkpoint it
   has on storage.

The trials themselves resume from the newest whole checkpoint on storage, which can be newer
than the snapshot's (tune/trainable.py, training/checkpoints.py). These are Ray Tune internals (file
names, the controller's iteration, the trial's checkpoint manager), so they stay in this file.
"""

from __future__ import annotations

import json
import logging
import pickletools
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from pyarrow import fs as pyarrow_fs
from ray import tune

from captioning.errors import ConfigError
from captioning.training.checkpoints import folders, storage

log = logging.getLogger(__name__)

# One snapshot of a sweep's state: these files, named by the session that wrote them.
STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl",
               "callback-states-{}.pkl")
WHOLE_STATE = ".whole-state"  # in the sweep's folder: the newest snapshot found whole
WHOLE_INDEX = "state.json"


@dataclass
class Snapshot:
    session: str
    iteration: int  # the controller's step count when it was saved
    files: dict[str, bytes]  # file name -> content


def _problem(name: str, data: bytes) -> str | None:
    """Why a state file is not whole, or None. Pickles are checked opcode by opcode, without
    loading them (no code of theirs runs)."""
    try:
        if name.startswith("experiment_state-"):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except (ValueError, UnicodeDecodeError) as error:
        return f"{name} is cut off ({error})" if data else f"{name} is empty"
    return None


def _read(filesystem: Any, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _sessions(filesystem: Any, sweep_path: str) -> list[str]:
    """The sessions that saved a state in the sweep's folder, oldest first."""
    infos = filesystem.get_file_info(pyarrow_fs.FileSelector(sweep_path, allow_not_found=True))
    names = [posixpath.basename(info.path) for info in infos]
    prefix, suffix = STATE_FILES[0].split("{}")
    return sorted(name[len(prefix):-len(suffix)] for name in names
                  if name.startswith(prefix) and name.endswith(suffix))


def read_snapshot(filesystem: Any, folder: str, session: str) -> tuple[Snapshot | None, str]:
    """The snapshot `session` saved in `folder`, or (None, why it is not whole)."""
    files = {}
    for template in STATE_FILES:
        name = template.format(session)
        try:
            files[name] = _read(filesystem, posixpath.join(folder, name))
        except FileNotFoundError:
            if template == STATE_FILES[0]:
                return None, f"{name} is missing"
            continue  # a sweep without searcher or callback state has none
        problem = _problem(name, files[name])
        if problem:
            return None, problem
    state = json.loads(files[STATE_FILES[0].format(session)])
    return Snapshot(session, int(state["runner_data"]["_iteration"]), files), ""


def whole_state(sweep_dir: str) -> Snapshot | None:
    """The snapshot kept in the sweep's `.whole-state/`, if any."""
    filesystem, path = storage(sweep_dir)
    root = posixpath.join(path, WHOLE_STATE)
    try:
        index = json.loads(_read(filesystem, posixpath.join(root, WHOLE_INDEX)))
        snapshot, _ = read_snapshot(filesystem, posixpath.join(root, index["folder"]),
                                    index["session"])
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None
    return snapshot


def _write(filesystem: Any, path: str, data: bytes) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def _keep(filesystem: Any, sweep_path: str, snapshot: Snapshot) -> None:
    """Copy `snapshot` into a folder of its own under .whole-state/, then point the index at
    it (written aside and moved into place), then drop the folder it pointed at before."""
    root = posixpath.join(sweep_path, WHOLE_STATE)
    folder = f"step-{snapshot.iteration:09d}"
    filesystem.create_dir(posixpath.join(root, folder))
    for name, data in snapshot.files.items():
        _write(filesystem, posixpath.join(root, folder, name), data)
    index = {"session": snapshot.session, "iteration": snapshot.iteration, "folder": folder}
    aside = posixpath.join(root, f".{WHOLE_INDEX}.tmp")
    _write(filesystem, aside, json.dumps(index).encode())
    filesystem.move(aside, posixpath.join(root, WHOLE_INDEX))
    for other in filesystem.get_file_info(pyarrow_fs.FileSelector(root)):
        if other.type == pyarrow_fs.FileType.Directory and \
                posixpath.basename(other.path) != folder:
            _delete(filesystem, other.path)


def repair_state(sweep_dir: str) -> str | None:
    """Before a resume: if the newest snapshot on storage is not whole, put back the newest
    one that is (an earlier session's on storage, or the copy in `.whole-state/`) and move
    the broken files aside into `.torn-state-<session>/`. Returns what was done (None if the
    newest was whole); raises ConfigError if no whole snapshot is left."""
    filesystem, path = storage(sweep_dir)
    torn: list[tuple[str, str]] = []  # (session, why), newest first
    whole = None
    for session in reversed(_sessions(filesystem, path)):
        whole, why = read_snapshot(filesystem, path, session)
        if whole is not None:
            break
        torn.append((session, why))
    if not torn:
        return None
    kept = whole_state(sweep_dir)
    if kept is not None and whole is not None and \
            (whole.session, whole.iteration) >= (kept.session, kept.iteration):
        kept = None  # an earlier session's state on storage is the newest whole one
    if kept is None and whole is None:
        raise ConfigError(f"--resume: the sweep's saved state in {sweep_dir} is not whole "
                          f"({torn[0][1]}) and no whole copy of it was kept; start the sweep "
                          "again without --resume")
    for session, _ in torn:
        aside = posixpath.join(path, f".torn-state-{session}")
        filesystem.create_dir(aside)
        for template in STATE_FILES:
            name = template.format(session)
            if filesystem.get_file_info(posixpath.join(path, name)).type \
                    != pyarrow_fs.FileType.NotFound:
                filesystem.move(posixpath.join(path, name), posixpath.join(aside, name))
    if kept is not None:
        for name, data in kept.files.items():
            _write(filesystem, posixpath.join(path, name), data)
    restored = (f"the copy kept at step {kept.iteration}" if kept is not None
                else f"session {whole.session}'s, saved at step {whole.iteration}")
    return (f"the sweep's newest saved state is not whole ({torn[0][1]}): resuming from "
            f"{restored}; the broken files are in {path}/.torn-state-{torn[0][0]}")


class CheckpointKeeper(tune.Callback):
    """Keeps the newest whole snapshot of the sweep's state, and deletes each trial's older
    checkpoints once that snapshot no longer points at them (see the module docstring)."""

    CHECK_EVERY_S = 5.0

    def __init__(self, sweep_dir: str, delete: bool = True):
        self.sweep_dir, self.delete = sweep_dir, delete
        self._reset()

    def _reset(self) -> None:
        self._iteration = 0
        self._trials: list[Any] = []
        self._registered: dict[str, list[Any]] = {}  # trial id -> its checkpoints, in order
        self._snapshots: dict[int, dict[str, str]] = {}  # iteration -> trial -> checkpoint
        self._kept_iteration = -1
        self._next_look = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into tuner.pkl at the start. A resumed sweep starts with an empty list: what
        # an earlier session registered and did not delete goes at the end (keep_only_latest).
        return {"sweep_dir": self.sweep_dir, "delete": self.delete}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sweep_dir, self.delete = state["sweep_dir"], state.get("delete", True)
        self._reset()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._iteration, self._trials = iteration, trials

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        kept = [c for c in self._registered.get(trial.trial_id, []) if c.path != checkpoint.path]
        self._registered[trial.trial_id] = [*kept, checkpoint]

    def get_state(self) -> None:
        # Ray Tune calls this while it writes a snapshot: remember what the snapshot points
        # at. Of several snapshots of one iteration, the first points at the oldest.
        self._snapshots.setdefault(self._iteration, {
            trial.trial_id: trial.checkpoint.path for trial in self._trials
            if trial.checkpoint is not None})
        return None  # nothing of this callback to restore

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._iteration, self._trials = iteration, trials
        if time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + self.CHECK_EVERY_S
        filesystem, path = storage(self.sweep_dir)
        sessions = _sessions(filesystem, path)
        if not sessions:
            return
        snapshot, _ = read_snapshot(filesystem, path, sessions[-1])
        if snapshot is None or snapshot.iteration <= self._kept_iteration:
            return  # being copied, or nothing new: look again later
        _keep(filesystem, path, snapshot)
        self._kept_iteration = snapshot.iteration
        self._delete_older(snapshot.iteration)

    def _delete_older(self, kept_iteration: int) -> None:
        durable = [n for n in self._snapshots if n <= kept_iteration]
        if not durable or not self.delete:
            return
        newest = max(durable)
        pointed = self._snapshots[newest]
        self._snapshots = {n: s for n, s in self._snapshots.items() if n >= newest}
        for trial_id, registered in self._registered.items():
            paths = [c.path for c in registered]
            if pointed.get(trial_id) not in paths:
                continue  # its checkpoint in the kept state is from an earlier session
            cut = paths.index(pointed[trial_id])
            for old in registered[:cut]:
                _delete(old.filesystem, old.path)
            self._registered[trial_id] = registered[cut:]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None or checkpoint.filesystem.get_file_info(checkpoint.path).type \
                != pyarrow_fs.FileType.NotFound:
            return
        log.warning("trial %s: its checkpoint %s is gone; it starts again from the newest "
                    "whole checkpoint it has on storage (or from scratch)", trial.trial_id,
                    checkpoint.path)
        _forget_checkpoints(trial)


def _forget_checkpoints(trial: Any) -> None:
    """Ray Tune internals: drop a trial's registered checkpoints, so it starts without one."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    manager = trial.run_metadata.checkpoint_manager
    trial.run_metadata.checkpoint_manager = _CheckpointManager(
        checkpoint_config=manager.checkpoint_config)


def _delete(filesystem: Any, path: str) -> None:
    try:
        filesystem.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("could not delete the old checkpoint %s: %s", path, error)


def keep_only_latest(results: Any) -> None:
    """After a sweep: each trial keeps its latest checkpoint (the one its result names), and
    every other checkpoint folder it left (older, or written after a saved state) goes."""
    for result in results:
        if result.checkpoint is None or result.path is None:
            continue
        for folder in folders(result.filesystem, result.path):
            if folder != result.checkpoint.path:
                _delete(result.filesystem, folder)
