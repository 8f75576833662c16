"""The ``segearth`` command: one module per command, each parsing its arguments and calling the library."""
