"""A simulated kernel for tests: fake module files, sysfs and modprobe."""
