"""The local index: embedder, SQLite/FTS5 + FAISS store, rank fusion."""
