"""klpd's D-Bus edge: the service (dbus-fast) and the tiny client klpctl uses.

Importing this package costs nothing: ``service`` pulls dbus_fast, ``wire`` only the
standard library, so klpctl never pays for dbus_fast or asyncio.
"""
