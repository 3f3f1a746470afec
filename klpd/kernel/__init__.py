"""Effects on the kernel and the module tree: sysfs/procfs, the catalog, modprobe, udev."""
