"""raftsmith home side: RAFT data generation, LoRA training, GGUF export, registration."""

__version__ = "0.1.0"
