"""Command-line entry points: one ``main(argv=None) -> int`` per command."""
