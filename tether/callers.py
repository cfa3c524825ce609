"""Which peers may call a service's privileged methods.

Every Hyperswarm connection is authenticated by the Noise handshake, so a handler
knows its caller's Ed25519 public key (``ServerContext.peer``). Tenants reach Tether
through the gateway, which checks their tokens; the services behind it must not take
work from anyone else, or a peer could skip the token check and the quotas by naming
any tenant it likes. So:

* ``Orchestrator.Submit``, ``GetJob`` and ``GetFleet`` accept only known gateways
  (and operators);
* ``Worker.Infer`` accepts only known orchestrators, and so do ``Worker.GetHealth``
  and ``Worker.WatchPresence`` (a worker's load, models and health are the fleet's
  layout, not public);
* ``Registry.Resolve`` and ``ListModels`` answer only known services and admitted
  workers (``tether.admission``): records carry policies that name tenants.

A peer is known when its public key was given with ``--allow-caller`` (repeatable;
``TETHER_ALLOW_CALLERS``, comma-separated) or when a ``*.pub`` file holding it (64 hex)
is in the service's keys folder, ``<data-dir>/keys``: every Tether service writes
its own ``<name>.pub`` there, so services sharing a data folder trust each other with
no setup, like SSH's ``authorized_keys``. ``--allow-any-caller`` turns the check off
(for a closed network only), and says so in the log.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tether.errors import PermissionDenied
from tether.keys import PUBLIC_KEY_SIZE
from tether.rpc import ServerContext

log = logging.getLogger("tether.callers")

#: How often, at most, the keys folder is read again for a caller not yet known.
RESCAN_S = 1.0


def parse_key(text: str) -> bytes:
    """A 32-byte public key from 64 hex characters; ValueError with a clear message."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"not a public key (64 hex characters): {text[:80]!r}")
    return key


class CallerPolicy:
    """The peers allowed to call a service's privileged methods (see the module doc)."""

    def __init__(
        self,
        keys: Iterable[bytes] = (),
        *,
        keys_dir: Path | None = None,
        allow_any: bool = False,
        role: str = "peer",
        pattern: str = "*.pub",
        also: Callable[[bytes], bool] | None = None,
        hint: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = set(keys)
        #: Other keys that count (e.g. admitted workers), and how to make one count.
        self.also = also
        self.hint = hint
        self.keys_dir = keys_dir
        #: Which files of ``keys_dir`` count (``operator*.pub``: operators only).
        self.pattern = pattern
        self.allow_any = allow_any
        self.role = role
        self._clock = clock
        self._found: set[bytes] = set()
        self._scanned_at = -RESCAN_S
        self._seen_listing: frozenset[tuple[str, int, int]] | None = None

    @classmethod
    def anyone(cls) -> CallerPolicy:
        """No check: for services embedded in a process that owns every peer (tests)."""
        return cls(allow_any=True)

    def allows(self, key: bytes) -> bool:
        if self.allow_any or key in self.keys or key in self._found:
            return True
        if self.also is not None and self.also(key):
            return True
        if self.keys_dir is not None and self._stale():
            self._found = set(self._read_keys_dir())
        return key in self._found

    def _stale(self) -> bool:
        """Should the keys folder be read again? Yes when its ``.pub`` files changed
        (names, sizes or times, from one ``scandir``), and once a second regardless, so
        that strangers calling in a loop cost a directory listing each, no reads."""
        now = self._clock()
        listing = self._listing()
        if listing == self._seen_listing and now - self._scanned_at < RESCAN_S:
            return False
        self._seen_listing, self._scanned_at = listing, now
        return True

    def _listing(self) -> frozenset[tuple[str, int, int]]:
        assert self.keys_dir is not None
        try:
            with os.scandir(self.keys_dir) as entries:
                return frozenset(
                    (e.name, e.stat().st_size, e.stat().st_mtime_ns)
                    for e in entries
                    if fnmatch.fnmatchcase(e.name, self.pattern)
                )
        except OSError:
            return frozenset()

    def _read_keys_dir(self) -> Iterable[bytes]:
        assert self.keys_dir is not None
        try:
            files = sorted(self.keys_dir.glob(self.pattern))
        except OSError:
            return
        for path in files:
            try:
                yield parse_key(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s: %s", path, exc)

    def check(self, context: ServerContext) -> None:
        """Return if the caller is allowed; else raise PERMISSION_DENIED saying why."""
        if self.allow_any:
            return
        try:
            key = parse_key(context.peer)
        except ValueError:
            key = b""
        if key and self.allows(key):
            return
        where = f" or put its key in {self.keys_dir / self.pattern}" if self.keys_dir else ""
        raise PermissionDenied(
            f"{context.method} is only for known {self.role}s and peer "
            f"{context.peer[:16] or '(unknown)'}... is not one; allow it with "
            f"--allow-caller {context.peer or 'KEY'}{where}{self.hint}",
            details={"peer": context.peer, "method": context.method},
        )
