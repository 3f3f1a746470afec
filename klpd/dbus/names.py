"""The versioned D-Bus names of klpd, in one place (no imports: klpctl reads them too).

``1`` in every name is the interface version: an incompatible change gets ``Klpd2``,
served next to ``Klpd1`` for a while.
"""

from __future__ import annotations

from typing import Final

BUS_NAME: Final = "io.github.Klpd1"
OBJECT_PATH: Final = "/io/github/Klpd1"
INTERFACE: Final = "io.github.Klpd1.Manager"
ERROR_PREFIX: Final = "io.github.Klpd1.Error."
POLKIT_ACTION: Final = "io.github.klpd1.manage"

# The errors a caller can get; ``ERROR_PREFIX + name``.
ERROR_ACCESS_DENIED: Final = ERROR_PREFIX + "AccessDenied"
ERROR_INVALID_ARGUMENT: Final = ERROR_PREFIX + "InvalidArgument"
ERROR_UNKNOWN_PATCH: Final = ERROR_PREFIX + "UnknownPatch"
ERROR_BUSY: Final = ERROR_PREFIX + "Busy"
ERROR_FAILED: Final = ERROR_PREFIX + "Failed"
ERROR_INTERNAL: Final = ERROR_PREFIX + "Internal"

# Signals (each carries ``patch, module, detail`` as ``sss``).
SIGNAL_PATCH_APPLIED: Final = "PatchApplied"
SIGNAL_PATCH_RETIRED: Final = "PatchRetired"
SIGNAL_PATCH_FAILED: Final = "PatchFailed"
SIGNAL_TRANSITION_STARTED: Final = "TransitionStarted"
SIGNAL_TRANSITION_FINISHED: Final = "TransitionFinished"
SIGNAL_TRANSITION_STALLED: Final = "TransitionStalled"
SIGNALS: Final = (
    SIGNAL_PATCH_APPLIED,
    SIGNAL_PATCH_RETIRED,
    SIGNAL_PATCH_FAILED,
    SIGNAL_TRANSITION_STARTED,
    SIGNAL_TRANSITION_FINISHED,
    SIGNAL_TRANSITION_STALLED,
)

# The longest a WaitConverged() call may block, in seconds.
WAIT_MAX_SECONDS: Final = 3600.0
