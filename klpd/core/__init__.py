"""Pure logic: data in, data out; no I/O (names, model, planner, observe, report, status)."""
