"""raftsmith laptop side: ingest, index, retrieve, chat, audit, bundle install.

Nothing in this package imports ``builder`` or the training stack (torch-training,
trl, peft, unsloth). Heavy libraries are imported inside the functions that use them.
"""

__version__ = "0.1.0"
