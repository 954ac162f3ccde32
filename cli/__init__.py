"""The ``radgr`` command line: one module per command group, each subcommand a small function that builds a
config, calls library code and returns an exit code. ``cli`` is the top layer: it may import every package."""
