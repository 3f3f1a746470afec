"""The ``io.github.Klpd1.Manager`` object: a thin adapter over :class:`Controller`.

Each D-Bus member is a line or two delegating to the controller; wire types are made
here and nowhere else. Reads are open; Reload/EnablePatch/DisablePatch are authorised
(:class:`klpd.dbus.limits.Callers`) on the sender of that very message, and every held
call takes a bounded slot. The schema is in ``docs/dbus.md`` and
``docs/io.github.Klpd1.xml``; the threat model in ``docs/security.md``.
"""

# No "from __future__ import annotations": see klpd.dbus.signatures.

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import TypeVar

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageFlag,
    NameFlag,
    RequestNameReply,
)
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess

# dbus-fast 2.x names them method/signal; 3.x+ keeps those as aliases of dbus_method/dbus_signal.
from dbus_fast.service import ServiceInterface, dbus_property
from dbus_fast.service import method as dbus_method
from dbus_fast.service import signal as dbus_signal

import klpd
from klpd.core.model import OverallState
from klpd.core.status import Controller, Event, EventKind, Snapshot
from klpd.dbus import names
from klpd.dbus.calls import record_call, refuse_oversized, served_call
from klpd.dbus.convert import (
    patch_to_wire,
    plan_options,
    properties_of,
    valid_patch,
    valid_timeout,
)
from klpd.dbus.departures import Departures
from klpd.dbus.errors import Busy, UnknownPatch, to_dbus_error
from klpd.dbus.limits import (
    PLAN_RESCAN_SECONDS,
    WAIT_BOUNDS,
    BlockingCache,
    Callers,
    Slots,
    Throttle,
    without_stacks,
)
from klpd.dbus.signatures import (
    BlockingList,
    DBusBool,
    DBusDouble,
    DBusStr,
    DBusUInt32,
    NoReply,
    PatchList,
    PlanOptions,
    SignalBody,
)
from klpd.dbus.transport import wait_when_the_socket_is_full

log = logging.getLogger(__name__)
T = TypeVar("T")


class DbusStartError(RuntimeError):
    """The service could not start (bus unreachable, name taken, policy denies it)."""


class BusUnreachableError(DbusStartError):
    """No bus listens at the address (yet): dbus-daemon is down or restarting."""


# --- the interface ----------------------------------------------------------------------


class ManagerInterface(ServiceInterface):
    """``io.github.Klpd1.Manager``; member names are the D-Bus ones."""

    def __init__(self, controller: Controller, bus: MessageBus) -> None:
        super().__init__(names.INTERFACE)
        self._controller = controller
        self._bus = bus
        self._last_properties = properties_of(controller.snapshot())
        self._described: tuple[Snapshot, str] | None = None
        self.callers = Callers(bus)
        self.waiters = Slots("WaitConverged", WAIT_BOUNDS)
        self.departures = Departures(bus)  # a caller gone, its waits end
        self.blocking = BlockingCache(controller)
        self.rescans = Throttle(PLAN_RESCAN_SECONDS)
        self._signal_for: dict[EventKind, Callable[[str, str, str], object]] = {
            EventKind.PATCH_APPLIED: self.PatchApplied,
            EventKind.PATCH_RETIRED: self.PatchRetired,
            EventKind.PATCH_FAILED: self.PatchFailed,
            EventKind.TRANSITION_STARTED: self.TransitionStarted,
            EventKind.TRANSITION_FINISHED: self.TransitionFinished,
            EventKind.TRANSITION_STALLED: self.TransitionStalled,
        }

    # properties (read-only; PropertiesChanged on every change)

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self._controller.snapshot().state.value

    @dbus_property(access=PropertyAccess.READ)
    def KernelRelease(self) -> DBusStr:
        return self._controller.snapshot().kernel_release

    @dbus_property(access=PropertyAccess.READ)
    def Transition(self) -> DBusStr:
        t = self._controller.snapshot().transition
        return t.module if t else ""

    @dbus_property(access=PropertyAccess.READ)
    def TransitionTarget(self) -> DBusStr:
        t = self._controller.snapshot().transition
        return t.target if t else ""

    @dbus_property(access=PropertyAccess.READ)
    def Stalled(self) -> DBusBool:
        t = self._controller.snapshot().transition
        return bool(t and t.stalled)

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> DBusStr:
        return self._controller.snapshot().last_error

    @dbus_property(access=PropertyAccess.READ)
    def LastReconcile(self) -> DBusDouble:
        return float(self._controller.snapshot().last_reconcile)

    @dbus_property(access=PropertyAccess.READ)
    def SchemaVersion(self) -> DBusUInt32:
        return self._controller.snapshot().schema_version

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return klpd.__version__

    # reads

    @dbus_method()
    async def Describe(self) -> DBusStr:
        snap = self._controller.snapshot()
        t = snap.transition
        if t is None or not any(b.stack for b in t.blocking) or await self._privileged("Describe"):
            return self._json_of(snap)
        return replace(snap, transition=replace(t, blocking=without_stacks(t.blocking))).to_json()

    @dbus_method()
    def ListPatches(self) -> PatchList:
        return [patch_to_wire(p) for p in self._controller.snapshot().patches]

    @dbus_method()
    def DescribePatch(self, name: DBusStr) -> DBusStr:
        report = self._controller.snapshot().patch(valid_patch(name))
        if report is None:
            raise UnknownPatch(f"no patch named {name!r}")
        return json.dumps(asdict(report), sort_keys=True)

    @dbus_method()
    async def ListBlockingTasks(self) -> BlockingList:
        tasks = self.blocking.tasks()
        if any(t.stack for t in tasks) and not await self._privileged("ListBlockingTasks"):
            tasks = without_stacks(tasks)  # kernel stacks: root and polkit only
        return [(t.pid, t.comm, t.patch_state, t.stack or "") for t in tasks]

    @dbus_method()
    async def WaitConverged(self, timeout: DBusDouble) -> DBusBool:
        # version 1's member: true only when klpd settled *converged* (WaitSettled says which)
        return await self._wait("WaitConverged", timeout) is OverallState.CONVERGED

    @dbus_method()
    async def WaitSettled(self, timeout: DBusDouble) -> DBusStr:
        return (await self._wait("WaitSettled", timeout)).value

    @dbus_method()
    async def Plan(self, options: PlanOptions) -> DBusStr:
        rescan, enable, disable = plan_options(options)
        if rescan and not self.rescans.ready() and not await self._privileged("Plan"):
            raise Busy(
                f"Plan with rescan: one per {PLAN_RESCAN_SECONDS:.0f} s for unprivileged "
                "callers (a rescan walks the whole catalog); try again later"
            )
        try:
            preview = await self._controller.plan_preview(
                rescan=rescan, enable=enable, disable=disable
            )
        except Exception as e:
            raise to_dbus_error(e, "Plan") from None
        return json.dumps(preview.to_dict(), sort_keys=True)

    async def _wait(self, what: str, timeout: float) -> OverallState:
        seconds = valid_timeout(timeout)
        if (settled := self._controller.settled()) is not None:
            return settled  # nothing to wait for, so no slot: 1,000 callers at once all served
        sender = self._this_call(what).sender or ""
        uid = await self._call(what, self.callers.uid(sender))
        privileged = uid == 0
        if not privileged and self.waiters.refusal(sender, uid, False) is not None:
            privileged = await self.callers.privileged(sender, uid)  # the reserve
        with self.waiters.hold(sender, uid, privileged):
            wait = self._controller.wait_settled(seconds)
            return await self._call(what, self.departures.unless_gone(sender, wait))

    # state changes (root or polkit)

    @dbus_method()
    async def Reload(self) -> NoReply:
        await self._authorize("Reload")
        await self._call("Reload", self._controller.reload())

    @dbus_method()
    async def EnablePatch(self, name: DBusStr) -> NoReply:
        await self._authorize("EnablePatch")
        await self._call("EnablePatch", self._controller.enable_patch(valid_patch(name)))

    @dbus_method()
    async def DisablePatch(self, name: DBusStr) -> NoReply:
        await self._authorize("DisablePatch")
        await self._call("DisablePatch", self._controller.disable_patch(valid_patch(name)))

    # signals: each is (patch, module, detail)

    @dbus_signal()
    def PatchApplied(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    @dbus_signal()
    def PatchRetired(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    @dbus_signal()
    def PatchFailed(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    @dbus_signal()
    def TransitionStarted(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    @dbus_signal()
    def TransitionFinished(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    @dbus_signal()
    def TransitionStalled(self, patch: str, module: str, detail: str) -> SignalBody:
        return [patch, module, detail]

    # plumbing

    def on_event(self, event: Event) -> None:
        """Controller listener: a signal for the event, then PropertiesChanged if any."""
        self.blocking.forget()  # something changed: the next ListBlockingTasks walks again
        emit = self._signal_for.get(event.kind)
        if emit is not None:
            emit(event.patch, event.module, event.detail)
        self.emit_changed_properties()

    def emit_changed_properties(self) -> None:
        now = properties_of(self._controller.snapshot())
        changed = {k: v for k, v in now.items() if self._last_properties.get(k) != v}
        self._last_properties = now
        if changed:
            self.emit_properties_changed(changed)

    def _json_of(self, snap: Snapshot) -> str:
        """``snap`` as JSON, made once per snapshot (the controller hands out the same object
        until something changes): 1,000 callers of ``Describe`` cost one ``to_json``."""
        if self._described is None or self._described[0] is not snap:
            self._described = (snap, snap.to_json())
        return self._described[1]

    def _this_call(self, what: str) -> Message:
        return served_call(what)

    async def _privileged(self, what: str) -> bool:
        sender = self._this_call(what).sender or ""
        return await self.callers.privileged(sender, await self.callers.uid(sender))

    async def _authorize(self, what: str) -> None:
        call = self._this_call(what)
        sender = call.sender or ""
        interactive = bool(call.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        try:
            # a caller that leaves gives its polkit check slot back (polkit may take 5 min)
            check = self.callers.authorize(sender, what, interactive=interactive)
            uid = await self.departures.unless_gone(sender, check)
        except DBusError as e:
            self.callers.note_refusal(sender, what, e.text)
            raise
        log.info("%s requested by uid %d (%s)", what, uid, sender)

    async def _call(self, what: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except Exception as e:
            raise to_dbus_error(e, what) from None


# --- lifecycle --------------------------------------------------------------------------


class DbusService:
    """The exported object on a connected bus; :meth:`close` takes it all down."""

    def __init__(self, bus: MessageBus, interface: ManagerInterface) -> None:
        self.bus = bus
        self.interface = interface
        self._closed = False
        self.unsubscribe: Callable[[], None] = lambda: None

    def on_event(self, event: Event) -> None:
        if self.bus.connected:
            try:
                self.interface.on_event(event)
            except (OSError, RuntimeError):
                if self.bus.connected:
                    raise
                # This very signal met the dead socket: dbus-fast finalises the bus, then
                # registers a writer on the closed fd (EBADF), or — 2.44, Debian 13's — goes
                # on iterating the set of buses it just removed itself from ("Set changed
                # size during iteration"). The bus is lost, not klpd.
        if not self.bus.connected:
            self.lost()

    def lost(self) -> None:
        """The bus went away under it (dbus-daemon restarted): stop listening to the
        controller, so that a service for the next bus is the only one (every lost one
        stayed subscribed and rebuilt the D-Bus properties on every event)."""
        self._closed = True
        self.unsubscribe()
        self.unsubscribe = lambda: None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.unsubscribe()
        self.unsubscribe = lambda: None
        self.bus.unexport(names.OBJECT_PATH)
        self.bus.disconnect()
        await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # dbus_fast: untyped


async def connect_bus(bus: str) -> MessageBus:
    """``"system"``, ``"session"`` or a D-Bus address, connected."""
    # dbus-fast 2.x already connects the socket in MessageBus(), 3.x+ in connect().
    try:
        if bus == "system":
            msgbus = MessageBus(bus_type=BusType.SYSTEM)
        elif bus == "session":
            msgbus = MessageBus(bus_type=BusType.SESSION)
        else:
            msgbus = MessageBus(bus_address=bus)
        connected = await msgbus.connect()
    except Exception as e:
        raise BusUnreachableError(f"cannot connect to the {bus} bus: {e}") from e
    wait_when_the_socket_is_full(connected)
    return connected


async def start_dbus(controller: Controller, bus: str) -> DbusService:
    """Connect to ``bus``, export the Manager object and own ``io.github.Klpd1``."""
    msgbus = await connect_bus(bus)
    interface = ManagerInterface(controller, msgbus)
    msgbus.add_message_handler(refuse_oversized)
    msgbus.add_message_handler(record_call)
    msgbus.export(names.OBJECT_PATH, interface)
    service = DbusService(msgbus, interface)
    try:
        await interface.departures.watch()
        reply = await msgbus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
    except DBusError as e:
        await service.close()
        raise DbusStartError(
            f"the {bus} bus refused the name {names.BUS_NAME}: {e.text} "
            f"(is etc/dbus-1/system.d/{names.BUS_NAME}.conf installed, and klpd root?)"
        ) from e
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        await service.close()
        raise DbusStartError(
            f"{names.BUS_NAME} is already owned on the {bus} bus: is another klpd running?"
        )
    service.unsubscribe = controller.subscribe(service.on_event)
    log.info("serving %s at %s on the %s bus", names.INTERFACE, names.OBJECT_PATH, bus)
    return service
