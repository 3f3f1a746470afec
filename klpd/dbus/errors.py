"""Typed D-Bus errors: one :class:`DBusError` subclass per failure a caller can get.

Nothing else ever reaches the wire: :func:`to_dbus_error` turns whatever the controller
raised into one of these, and an unexpected exception into :class:`InternalError`
without its traceback (that goes to the journal).
"""

from __future__ import annotations

import logging

from dbus_fast import DBusError

from klpd.core.status import (
    BusyError,
    ControlError,
    ControlFailed,
    InvalidArgumentError,
    UnknownPatchError,
)
from klpd.dbus import names

log = logging.getLogger(__name__)


class KlpdError(DBusError):
    """Base class: subclasses fix the error name."""

    error_name: str = names.ERROR_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(self.error_name, message)


class AccessDenied(KlpdError):
    error_name = names.ERROR_ACCESS_DENIED


class InvalidArgument(KlpdError):
    error_name = names.ERROR_INVALID_ARGUMENT


class UnknownPatch(KlpdError):
    error_name = names.ERROR_UNKNOWN_PATCH


class Busy(KlpdError):
    error_name = names.ERROR_BUSY


class Failed(KlpdError):
    error_name = names.ERROR_FAILED


class InternalError(KlpdError):
    error_name = names.ERROR_INTERNAL


# The controller's refusals, by type; a type not here (the base, a new one) is Failed.
BY_TYPE: dict[type[ControlError], type[KlpdError]] = {
    UnknownPatchError: UnknownPatch,
    InvalidArgumentError: InvalidArgument,
    BusyError: Busy,
    ControlFailed: Failed,
}


def from_control_error(err: ControlError) -> KlpdError:
    """The typed error for a controller refusal (the nearest class in the table wins)."""
    for cls in type(err).__mro__:
        if cls in BY_TYPE:
            return BY_TYPE[cls](str(err))
    return Failed(str(err))


def to_dbus_error(err: BaseException, what: str) -> DBusError:
    """Whatever ``what`` raised, as an error fit for the wire."""
    if isinstance(err, DBusError):
        return err
    if isinstance(err, ControlError):
        return from_control_error(err)
    log.error("%s failed unexpectedly", what, exc_info=err)
    return InternalError(f"{what} failed: internal error ({type(err).__name__}); see the log")
