"""The ``raftsmith`` command line: thin click shims over library functions."""
