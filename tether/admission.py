"""Which workers an orchestrator places work on: admitted worker keys.

A worker signs its presence with its own key, but anyone can make a key: a signed
presence proves who a worker is, not that it may see tenants' prompts. A worker key is
*admitted* when

1. the Metadata Store's ``admitted_workers`` table lists it and it is not revoked
   (``tether admit KEY`` / ``tether revoke KEY``; orchestrators in other data folders
   share the table through PostgreSQL, ``--metadata-url``); or
2. its ``.pub`` file is in the orchestrator's own data folder, under
   ``<data-dir>/keys/workers/``, where a worker started with that same data folder
   writes it, and the table does not list it as revoked. This is the single-host
   convenience that keeps ``tether up`` and one shared data folder working with no
   setup; a worker with a data folder of its own is not admitted by it.

Each worker has a key of its own: without ``--key-file`` a worker claims
``<data-dir>/keys/workers/<worker-id>.key``, or, without ``--worker-id``, the first
``worker-<n>.key`` no running worker holds (a lock file beside the key says so), so
two workers on one data folder never share a key, and a restarted worker gets its
key back. A key another running worker holds is refused with a clear error.

Orchestrators and the registry read the table again every ``RELOAD_S`` (5 s, one
heartbeat period), so a revocation applies within one heartbeat period; a key not
admitted makes them read it again at once (at most once a second), so an admission
applies from the worker's next heartbeat, or its next registry call. A store that
cannot be read keeps the last list (and says so in the log).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from tether import blocking
from tether.callers import CallerPolicy
from tether.errors import FailedPrecondition, InvalidArgument
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.metadata.tables import AdmittedWorker

log = logging.getLogger("tether.admission")

#: How often the admitted keys are read again: one worker heartbeat period.
RELOAD_S = 5.0
#: A key not admitted may make the table be read again, at most this often (a worker
#: asks the registry once at start, right after ``tether admit``).
MISS_RELOAD_S = 1.0
#: How many ``worker-<n>`` keys a data folder offers workers that name none.
MAX_WORKER_SLOTS = 256
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def worker_keys_dir(data_dir: Path) -> Path:
    """Where workers sharing ``data_dir`` keep their keys (``<name>.key``, ``<name>.pub``)."""
    return data_dir / "keys" / "workers"


def worker_key_path(data_dir: Path, worker_id: str) -> Path:
    """The key file of the worker ``worker_id`` started with ``data_dir``; InvalidArgument
    when the id cannot name a file."""
    if not _KEY_NAME.fullmatch(worker_id):
        raise InvalidArgument(
            f"--worker-id {worker_id!r} cannot name a key file: use letters, digits, "
            "'.', '_' and '-' (or pass --key-file)"
        )
    return worker_keys_dir(data_dir) / f"{worker_id}.key"


@dataclass
class WorkerKey:
    """A worker's own key pair, held (locked) while the worker runs."""

    keypair: KeyPair
    path: Path
    #: The open lock file; closing it (or the process ending) frees the key.
    lock_fd: int

    def release(self) -> None:
        os.close(self.lock_fd)


def _lock(key_path: Path) -> int | None:
    """Lock ``<key>.lock`` for this process; None if another process holds it."""
    lock = key_path.with_suffix(".lock")
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise FailedPrecondition(f"cannot lock the worker key: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_worker_key(
    data_dir: Path, *, worker_id: str | None = None, key_file: Path | None = None
) -> WorkerKey:
    """This worker's key (see the module doc); its ``.pub`` is written beside it.

    FailedPrecondition when another running worker holds the key asked for,
    InvalidArgument when ``worker_id`` cannot name a key file.
    """
    if key_file is not None or worker_id is not None:
        path = key_file or worker_key_path(data_dir, str(worker_id))
        fd = _lock(path)
        if fd is None:
            raise FailedPrecondition(
                f"key file {path} is in use by another running worker; two workers must "
                "not share a key: give this one another --worker-id or --key-file",
                details={"path": str(path)},
            )
    else:
        for n in range(1, MAX_WORKER_SLOTS + 1):
            path = worker_keys_dir(data_dir) / f"worker-{n}.key"
            if (fd := _lock(path)) is not None:
                break
        else:
            raise FailedPrecondition(
                f"{MAX_WORKER_SLOTS} workers already run on {data_dir}; pass --worker-id"
            )
    try:
        keypair = KeyPair.load_or_generate(path)
        keypair.save_public(path.with_suffix(".pub"))
    except BaseException:
        os.close(fd)
        raise
    return WorkerKey(keypair, path, fd)


class Admissions:
    """The worker keys an orchestrator admits (see the module doc)."""

    def __init__(
        self,
        load: Callable[[], Iterable[AdmittedWorker]],
        *,
        keys_dir: Path | None = None,
        reload_s: float = RELOAD_S,
    ) -> None:
        self._load = load
        self.reload_s = reload_s
        #: Worker keys in the data folder (read again when its files change).
        self._folder = (
            CallerPolicy(keys_dir=keys_dir, role="worker") if keys_dir is not None else None
        )
        self._admitted: frozenset[bytes] = frozenset()
        self._revoked: frozenset[bytes] = frozenset()
        self._loaded_at = -math.inf

    @classmethod
    def from_store(cls, store: MetadataStore, data_dir: Path | None = None) -> Admissions:
        """The store's table, and the worker keys of ``data_dir`` when given."""
        keys_dir = worker_keys_dir(data_dir) if data_dir is not None else None
        return cls(store.worker_admissions, keys_dir=keys_dir)

    def admits(self, key: bytes) -> bool:
        if key in self._revoked:
            return False
        return key in self._admitted or (self._folder is not None and self._folder.allows(key))

    async def follow(self) -> None:
        """Read the table again every ``reload_s``, forever (for services that only ask
        ``admits``; the orchestrator's discovery also evicts, see ``DiscoverySub``)."""
        while True:
            await trio.sleep(self.reload_s)
            await self.reload()

    async def admits_now(self, key: bytes) -> bool:
        """``admits``, reading the table again first when the key is not admitted and
        the last read is over ``MISS_RELOAD_S`` old (strangers cost one read a second)."""
        if self.admits(key) or trio.current_time() - self._loaded_at < MISS_RELOAD_S:
            return self.admits(key)
        await self.reload()
        return self.admits(key)

    async def reload(self) -> None:
        """Read the table again; on failure keep the last list."""
        self._loaded_at = trio.current_time()
        try:
            rows = await blocking.run_sync(lambda: list(self._load()))
        except Exception as exc:  # the store is down: keep placing on the keys we know
            log.warning("cannot read the admitted workers (keeping the last list): %s", exc)
            return
        admitted: set[bytes] = set()
        revoked: set[bytes] = set()
        for row in rows:
            try:
                key = bytes.fromhex(row.public_key)
            except ValueError:
                continue
            (revoked if row.revoked else admitted).add(key)
        self._admitted, self._revoked = frozenset(admitted), frozenset(revoked)
