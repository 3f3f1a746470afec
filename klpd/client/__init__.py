"""klpctl and its small standard-library D-Bus client. Importing this package costs nothing."""
