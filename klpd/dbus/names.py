"""The versioned D-Bus names of klpd, in one place (no imports at all: klpctl reads them).

``1`` in every name is the interface version: an incompatible change gets ``Klpd2``,
served next to ``Klpd1`` for a while.
"""

from __future__ import annotations

BUS_NAME = "io.github.Klpd1"
OBJECT_PATH = "/io/github/Klpd1"
INTERFACE = "io.github.Klpd1.Manager"
ERROR_PREFIX = "io.github.Klpd1.Error."
POLKIT_ACTION = "io.github.klpd1.manage"

# The errors a caller can get; ``ERROR_PREFIX + name``.
ERROR_ACCESS_DENIED = ERROR_PREFIX + "AccessDenied"
ERROR_INVALID_ARGUMENT = ERROR_PREFIX + "InvalidArgument"
ERROR_UNKNOWN_PATCH = ERROR_PREFIX + "UnknownPatch"
ERROR_BUSY = ERROR_PREFIX + "Busy"
ERROR_FAILED = ERROR_PREFIX + "Failed"
ERROR_INTERNAL = ERROR_PREFIX + "Internal"

# Signals (each carries ``patch, module, detail`` as ``sss``).
SIGNAL_PATCH_APPLIED = "PatchApplied"
SIGNAL_PATCH_RETIRED = "PatchRetired"
SIGNAL_PATCH_FAILED = "PatchFailed"
SIGNAL_TRANSITION_STARTED = "TransitionStarted"
SIGNAL_TRANSITION_FINISHED = "TransitionFinished"
SIGNAL_TRANSITION_STALLED = "TransitionStalled"
SIGNALS = (
    SIGNAL_PATCH_APPLIED,
    SIGNAL_PATCH_RETIRED,
    SIGNAL_PATCH_FAILED,
    SIGNAL_TRANSITION_STARTED,
    SIGNAL_TRANSITION_FINISHED,
    SIGNAL_TRANSITION_STALLED,
)

# The longest a WaitConverged() call may block, in seconds.
WAIT_MAX_SECONDS = 3600.0
