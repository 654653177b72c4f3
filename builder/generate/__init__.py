"""RAFT training-data generation: questions, oracle + distractor assembly, teacher, quality, engine."""
