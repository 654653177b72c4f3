"""Offline transfer bundle: one tar that carries a workspace's answering half to a laptop.

Modules: :mod:`~rag.bundle.create`, :mod:`~rag.bundle.reader` (verify and the checking walk),
:mod:`~rag.bundle.headers` (raw tar header checks before tarfile parses them),
:mod:`~rag.bundle.install`, :mod:`~rag.bundle.manifest`, :mod:`~rag.bundle.members` (name and
type checks), :mod:`~rag.bundle.paths` (config paths stay inside the workspace),
:mod:`~rag.bundle.provenance` (digest and HMAC signature), :mod:`~rag.bundle.scan` (secrets)
and :mod:`~rag.bundle.reports`.

Layout inside the tar (every path relative, POSIX, regular files only)::

    manifest.json              FIRST member: format, created_at, raftsmith version, export
                               name, and every other member's path, size and sha256; its own
                               "manifest_sha256" covers its raw bytes (see _seal_manifest)
    raftsmith.yaml             the config, paths rewritten for the install layout
    export/<files>             the newest export gguf/<name>/ (GGUFs, adapter, Modelfiles,
                               its manifest.json); absent when nothing was exported yet
    index/<files>              FAISS + SQLite (consistent snapshot via SQLite's backup API)
    embedding/<files>          the sentence-transformers folder (the laptop has no internet)
    rerank/<files>             the cross-encoder folder of chat.rerank_model, when one is set
    domain_questions/<files>   the question sets (*.yaml)

Installed layout (``install_bundle``): ``export/`` lands in ``gguf/<export name>/``, the rest
keeps its path; the bundle manifest is kept as ``.raftsmith/bundle-manifest.json``.

Everything streams in 1 MiB blocks (GGUFs can be many GB). Verification reads the tar as a
stream, so a ``.tar.gz`` works the same way, and a file object (BytesIO) can be verified.
"""

from __future__ import annotations

from rag.bundle.create import create_bundle
from rag.bundle.install import install_bundle
from rag.bundle.manifest import BundleManifest, ManifestEntry, seal_manifest
from rag.bundle.members import BUNDLE_FORMAT
from rag.bundle.reader import read_manifest, verify_bundle
from rag.bundle.reports import BundleReport, InstallReport, VerifyReport
from rag.bundle.scan import find_secret

__all__ = [
    "BUNDLE_FORMAT",
    "BundleManifest",
    "BundleReport",
    "InstallReport",
    "ManifestEntry",
    "VerifyReport",
    "create_bundle",
    "find_secret",
    "install_bundle",
    "read_manifest",
    "seal_manifest",
    "verify_bundle",
]
