"""A run's checkpoints in storage: step-named folders, each complete only once its marker exists.

    store = CheckpointStore(filesystem, "isrn-checkpoints/runs/smoke-20261129-101500")
    store.upload(Path("/tmp/isrn-ckpt-x"), step=12, epoch=2)    # files first, COMPLETE.json last
    store.latest()                                               # StoredCheckpoint(step=12, ...)

Why not only Ray's record: Train V2 registers a checkpoint when its controller has collected every
rank's report (polled every 2 s). A worker that dies after its upload finished but before that poll
takes the report with it, and the restarted group would get the previously registered checkpoint,
or none (ray-project/ray#41700; Ray's source marks the spot "TODO: two phase commit"). The files are
safe in storage, so the platform looks there too: like PyTorch DCP's `.metadata` or Composer's
`latest` pointer, a marker written after every other file says that a folder is whole, and a
half-uploaded folder is never used.

The filesystem is a `pyarrow.fs.FileSystem` (S3 in production, the local one in tests and
`LocalSession`), the same object Ray Train writes with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jobs.metrics import CHECKPOINT_SCORE, STEP

log = logging.getLogger(__name__)

UNEVALUATED = -1.0
"""The `checkpoint_score` of a checkpoint no evaluation saw (kept by Ray only while it is the latest,
to resume from): below every AP (APs lie in [0, 1]) and finite, because Ray writes its checkpoint
bookkeeping as strict JSON, where -inf becomes null and a resumed run's controller then fails to
rank the checkpoints it restored."""


def is_evaluated(score: float) -> bool:
    """Whether a checkpoint score is an AP of the checkpoint's own weights."""
    return math.isfinite(score) and score >= 0.0


def best_evaluated(checkpoints: Iterable[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]] | None:
    """The rule that picks a run's model: of (checkpoint, its report's metrics) pairs, the evaluated one
    with the highest `checkpoint_score` (AP Hard of its own weights); on a tie the later step. None
    when no checkpoint was evaluated. Training runs and Tune trials both log the model it picks."""
    scored = [(c, m) for c, m in checkpoints if is_evaluated(float(m.get(CHECKPOINT_SCORE, UNEVALUATED)))]
    return max(scored, key=lambda pair: (float(pair[1][CHECKPOINT_SCORE]), int(pair[1].get(STEP, 0))), default=None)

COMPLETE_MARKER = "COMPLETE.json"
"""Written after all other files of a checkpoint folder, with their sizes: its presence means whole."""
_STEP_FOLDER = re.compile(r"^step_(\d{8,})$")


def checkpoint_dir_name(step: int) -> str:
    """`step_00000012`: sorts by step, and names the same checkpoint on every rank and attempt."""
    return f"step_{step:08d}"


def step_of(path: str) -> int | None:
    """The step of a checkpoint folder path (`…/step_00000012` -> 12), None for other names."""
    match = _STEP_FOLDER.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    epoch: int
    path: str
    """Path on the store's filesystem (`bucket/prefix/run/step_…` for S3)."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    """The metrics reported with the checkpoint (its marker's copy): `checkpoint_score`, `val_ap_*`, …"""


class CheckpointStore:
    """The checkpoint folders of one run under `run_path` on a pyarrow filesystem."""

    def __init__(self, filesystem: Any, run_path: str) -> None:
        self.filesystem = filesystem
        self.run_path = run_path.rstrip("/")

    @classmethod
    def local(cls, root: Path) -> "CheckpointStore":
        from pyarrow import fs

        root.mkdir(parents=True, exist_ok=True)
        return cls(fs.LocalFileSystem(), str(root.resolve()))

    def path_of(self, step: int) -> str:
        return f"{self.run_path}/{checkpoint_dir_name(step)}"

    def url_of(self, path: str) -> str:
        """A folder of this store as a URL others can read (`s3://bucket/…`, or the local path)."""
        return f"s3://{path}" if self.filesystem.type_name == "s3" else path

    # ---- writing
    def upload(self, local_dir: Path, *, step: int, epoch: int, metrics: dict[str, Any] | None = None) -> str:
        """Copy every file of `local_dir` into the step's folder, check their sizes, then write the
        marker; returns the folder's path. An exception leaves a folder without marker (never used)."""
        destination = self.path_of(step)
        self.filesystem.create_dir(destination)
        sizes: dict[str, int] = {}
        for file in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            name = file.relative_to(local_dir).as_posix()
            if "/" in name:
                self.filesystem.create_dir(f"{destination}/{name.rsplit('/', 1)[0]}")
            with open(file, "rb") as source, self.filesystem.open_output_stream(f"{destination}/{name}") as target:
                shutil.copyfileobj(source, target, length=8 << 20)
            sizes[name] = file.stat().st_size
        # Read back what the store holds: some stores accept a write and lose it (docs/platform-notes.md:
        # SeaweedFS without credentials), and a marker must never vouch for a missing file.
        stored = {info.path[len(destination) + 1:]: info.size for info in self._list(destination, recursive=True)}
        wrong = {name: (size, stored.get(name)) for name, size in sizes.items() if stored.get(name) != size}
        if wrong:
            raise OSError(f"checkpoint upload to {destination} is incomplete (file: (written, stored) bytes): {wrong}")
        marker = {"step": step, "epoch": epoch, "files": sizes, "metrics": metrics or {}}
        with self.filesystem.open_output_stream(f"{destination}/{COMPLETE_MARKER}") as target:
            target.write(json.dumps(marker, default=float).encode())
        return destination

    # ---- reading
    def _list(self, path: str, recursive: bool = False) -> list[Any]:
        from pyarrow import fs

        return self.filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True, recursive=recursive))

    def folders(self) -> list[str]:
        """Every step folder of the run, complete or not, by step."""
        from pyarrow import fs

        found = [i.path for i in self._list(self.run_path) if i.type == fs.FileType.Directory and step_of(i.path) is not None]
        return sorted(found, key=lambda p: step_of(p) or 0)

    def read(self, path: str) -> StoredCheckpoint | None:
        """The checkpoint in folder `path` if its marker exists, else None."""
        from pyarrow import fs

        marker = f"{path.rstrip('/')}/{COMPLETE_MARKER}"
        if self.filesystem.get_file_info(marker).type != fs.FileType.File:
            return None
        with self.filesystem.open_input_stream(marker) as stream:
            record = json.loads(stream.readall())
        return StoredCheckpoint(step=int(record["step"]), epoch=int(record["epoch"]), path=path.rstrip("/"),
                                metrics=dict(record.get("metrics") or {}))

    def complete(self) -> list[StoredCheckpoint]:
        """Every complete checkpoint of the run, by step."""
        return [found for found in map(self.read, self.folders()) if found is not None]

    def best_evaluated(self) -> StoredCheckpoint | None:
        """The run's checkpoint that `best_evaluated` picks, from the metrics in the markers."""
        best = best_evaluated((found, found.metrics) for found in self.complete())
        return best[0] if best else None

    def latest(self) -> StoredCheckpoint | None:
        """The complete checkpoint of the highest step, or None."""
        for path in reversed(self.folders()):
            found = self.read(path)
            if found is not None:
                return found
        return None

    def download(self, path: str, local_dir: Path) -> Path:
        """Copy checkpoint folder `path` into `local_dir` (created)."""
        from pyarrow import fs

        local_dir.mkdir(parents=True, exist_ok=True)
        fs.copy_files(path, str(local_dir), source_filesystem=self.filesystem,
                      destination_filesystem=fs.LocalFileSystem())
        return local_dir

    # ---- pruning
    def delete(self, path: str) -> None:
        self.filesystem.delete_dir(path)
        log.info("deleted checkpoint folder %s", path)

    def prune_incomplete(self, below_step: int | None = None) -> list[str]:
        """Delete folders without marker (uploads a dead worker left half done), optionally only below
        a step. Call only when no upload of this run is in flight (a worker group's start)."""
        removed = [p for p in self.folders() if (below_step is None or (step_of(p) or 0) < below_step)
                   and self.read(p) is None]
        for path in removed:
            self.delete(path)
        return removed

    def prune_except(self, keep: set[str]) -> list[str]:
        """Delete the step folders not in `keep` that are incomplete or older than the newest kept
        one: after a run, those Ray never registered (its `num_to_keep` cannot see them) and half
        uploads. Folders are matched by their step, whatever prefix the paths carry. A complete
        checkpoint newer than every kept one is never deleted: after a successful run it can only
        be one Ray has not told about yet, and it holds the newest weights."""
        keep_steps = {step_of(path) for path in keep} - {None}
        newest_kept = max(keep_steps, default=-1)
        removed = [p for p in self.folders() if step_of(p) not in keep_steps
                   and ((step_of(p) or 0) < newest_kept or self.read(p) is None)]
        for path in removed:
            self.delete(path)
        return removed
