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

Orchestrators read the table again every ``RELOAD_S`` (5 s, one heartbeat period):
a revocation applies within one heartbeat period, an admission by the next heartbeat
after that. A store that cannot be read keeps the last list (and says so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tether import blocking
from tether.callers import CallerPolicy
from tether.metadata.store import MetadataStore
from tether.metadata.tables import AdmittedWorker

log = logging.getLogger("tether.admission")

#: How often the admitted keys are read again: one worker heartbeat period.
RELOAD_S = 5.0


def worker_keys_dir(data_dir: Path) -> Path:
    """Where workers sharing ``data_dir`` keep their keys (``<name>.key``, ``<name>.pub``)."""
    return data_dir / "keys" / "workers"


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

    @classmethod
    def from_store(cls, store: MetadataStore, data_dir: Path | None = None) -> Admissions:
        """The store's table, and the worker keys of ``data_dir`` when given."""
        keys_dir = worker_keys_dir(data_dir) if data_dir is not None else None
        return cls(store.worker_admissions, keys_dir=keys_dir)

    def admits(self, key: bytes) -> bool:
        if key in self._revoked:
            return False
        return key in self._admitted or (self._folder is not None and self._folder.allows(key))

    async def reload(self) -> None:
        """Read the table again; on failure keep the last list."""
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
