"""At most two TCG guests at once in one test session: each is a host thread at 100 %, and
CI has two cores. The real-kernel lines, the boot-guard guest and the Debian 13 system guest
each take a slot around their qemu run, so every guest can be started as soon as its build is
ready (tests/conftest.py starts the builds at collection) without overloading the machine.
``KLPD_GUEST_SLOTS`` changes the number."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get("KLPD_GUEST_SLOTS", "2"))))


@contextmanager
def guest_slot() -> Iterator[None]:
    """Hold one of the session's guest slots (waiting for one)."""
    with SLOTS:
        yield
