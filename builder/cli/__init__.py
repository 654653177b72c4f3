"""Command-line shims of the builder (home machine) verbs."""
