"""The daemon around the core: the orchestrator and its parts, config, sd_notify, logs, metrics."""
