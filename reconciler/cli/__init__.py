"""Command line: argparse only, one module per command; ``main`` maps exceptions to exit codes."""
