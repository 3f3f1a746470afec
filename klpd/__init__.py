"""klpd: userspace orchestration of split kernel livepatch modules (<patch>__<object>)."""

__version__ = "0.1.0"
