"""The one exception tree of raftsmith. Every message says what to do next."""

from __future__ import annotations


class RaftsmithError(Exception):
    """Base of every error raftsmith raises on purpose; the CLI prints it and exits 1."""


class ConfigError(RaftsmithError):
    """raftsmith.yaml (or an option) is invalid; the message names the key and the fix."""


class IngestError(RaftsmithError):
    """A document or site could not be read or indexed."""


class IndexStoreError(RaftsmithError):
    """The index is missing, locked by another writer, or inconsistent."""


class TeacherError(RaftsmithError):
    """The teacher LLM refused, failed or could not be reached."""


class KeyringUnavailable(RaftsmithError):
    """No usable OS keyring; the message names how to provide the key instead."""


class TrainingError(RaftsmithError):
    """Training could not start or failed (data, memory, backend)."""


class ExportError(RaftsmithError):
    """Merging, converting, quantizing or verifying a GGUF failed."""


class OllamaUnavailable(RaftsmithError):
    """The Ollama server cannot be reached; start it with 'ollama serve' or set the host."""


class BackendError(RaftsmithError):
    """A chat backend (llama.cpp, Ollama, OpenAI-compatible) failed."""


class AuditError(RaftsmithError):
    """The audit log cannot be written or does not verify; answering is refused."""


class IntegrityError(RaftsmithError):
    """A bundle or export does not match its manifest; nothing was installed."""
