"""Reading side of a bundle: the sealed manifest and the streaming, checking walk.

``walk`` reads a tar as a stream (plain or gzip, a file or a BytesIO), checks every member's
name, type, size and sha256 against the manifest and hands the bytes to an optional sink,
which is how ``install`` writes them. A damaged or crafted bundle raises IntegrityError
naming the first problem; nothing it wrote counts until the walk ends cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rag.bundle_checks import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BundleManifest,
    ManifestEntry,
    check_member_name,
    check_member_type,
    fold_key,
    parse_manifest,
)
from rag.config import STATE_DIR
from rag.errors import IntegrityError

BLOCK = 1 << 20
SEAL_PREFIX = b'{"manifest_sha256": "'
STATE_MANIFEST = f"{STATE_DIR}/bundle-manifest.json"

# Called for each file member once its header checks out; returns where its bytes go.
Sink = Callable[[tarfile.TarInfo, ManifestEntry, BundleManifest], "IO[bytes] | None"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich byte-progress bar on stderr (stdout stays clean for --json); a no-op when off."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


def seal_manifest(body: dict[str, Any]) -> bytes:
    """Serialize with a leading self-hash over the raw bytes (hash field zeroed).

    Hashing the raw bytes, not a re-serialization, means any changed byte of manifest.json
    (whitespace included) is caught, and the hash sits at a fixed offset.
    """
    rest = json.dumps(body, indent=1, sort_keys=True, ensure_ascii=True)
    raw = SEAL_PREFIX + b"0" * 64 + b'",' + rest[1:].encode("ascii")
    digest = hashlib.sha256(raw).hexdigest().encode("ascii")
    return raw[: len(SEAL_PREFIX)] + digest + raw[len(SEAL_PREFIX) + 64 :]


def unseal_manifest(raw: bytes) -> BundleManifest:
    n = len(SEAL_PREFIX)
    if not raw.startswith(SEAL_PREFIX) or len(raw) < n + 66:
        raise IntegrityError("the bundle manifest is damaged (no seal); the bundle cannot be trusted")
    claimed = raw[n : n + 64]
    zeroed = raw[:n] + b"0" * 64 + raw[n + 64 :]
    if hashlib.sha256(zeroed).hexdigest().encode("ascii") != claimed:
        raise IntegrityError("manifest.json does not match its own checksum; the bundle is damaged")
    return parse_manifest(raw)


def walk(fileobj: IO[bytes], sink: Sink | None, advance: Callable[[int], None]) -> tuple[BundleManifest, int]:
    """Stream every member, checking names, types, sizes and hashes against the manifest."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            first = tf.next()
            if first is None or first.name != MANIFEST_NAME or not first.isreg():
                raise IntegrityError("the bundle does not start with manifest.json; it is not a raftsmith bundle or is damaged")
            if first.size > MAX_MANIFEST_BYTES:
                raise IntegrityError("the bundle manifest is implausibly large; the bundle is damaged")
            manifest = unseal_manifest(_read_exact(tf, first, first.size))
            dirs = {p.rsplit("/", i)[0] for p in manifest.entries for i in range(1, p.count("/") + 1)}
            seen: set[str] = set()
            folded: set[str] = {fold_key(MANIFEST_NAME)}
            total = 0
            # Not "for m in tf": in stream mode that re-yields the members already read.
            while (m := tf.next()) is not None:
                check_member_name(m.name)
                check_member_type(m)
                name = m.name.rstrip("/")
                if fold_key(name) in folded:
                    raise IntegrityError(f"bundle member {ascii(name)} appears twice (or differs only in case)")
                folded.add(fold_key(name))
                if m.isdir():
                    if name not in dirs:
                        raise IntegrityError(f"bundle folder {ascii(name)} is not in the manifest (extra member)")
                    continue
                entry = manifest.entries.get(name)
                if entry is None:
                    raise IntegrityError(f"bundle member {ascii(name)} is not in the manifest (extra or renamed member)")
                if m.size != entry.size:
                    raise IntegrityError(
                        f"bundle member {ascii(name)} claims {m.size} bytes, the manifest says {entry.size} (size lie)"
                    )
                out = sink(m, entry, manifest) if sink is not None else None
                try:
                    digest, count = _stream_member(tf, m, out, advance)
                finally:
                    if out is not None:
                        out.close()
                if count != entry.size:
                    raise IntegrityError(f"bundle member {ascii(name)} holds {count} bytes, the manifest says {entry.size}")
                if digest != entry.sha256:
                    raise IntegrityError(
                        f"bundle member {ascii(name)} does not match its sha256 in the manifest; the bundle is damaged"
                    )
                seen.add(name)
                total += count
    except IntegrityError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as err:
        raise IntegrityError(
            f"the bundle is not a readable tar ({type(err).__name__}: {err}); it is truncated or damaged"
        ) from None
    missing = sorted(set(manifest.entries) - seen)
    if missing:
        raise IntegrityError(f"bundle member {ascii(missing[0])} is listed in the manifest but missing ({len(missing)} missing)")
    return manifest, total


def read_manifest(src: Path) -> BundleManifest:
    """Only the (sealed, checked) manifest: the first member, read without touching the rest."""
    with open(src, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tf:
                first = tf.next()
                if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
                    raise IntegrityError("the bundle does not start with manifest.json; it is not a raftsmith bundle or is damaged")
                return unseal_manifest(_read_exact(tf, first, first.size))
        except IntegrityError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as err:
            raise IntegrityError(
                f"the bundle is not a readable tar ({type(err).__name__}: {err}); it is truncated or damaged"
            ) from None


def _read_exact(tf: tarfile.TarFile, m: tarfile.TarInfo, size: int) -> bytes:
    f = tf.extractfile(m)
    assert f is not None
    data = f.read(size + 1)
    if len(data) != size:
        raise IntegrityError(f"bundle member {ascii(m.name)} is truncated")
    return data


def _stream_member(tf: tarfile.TarFile, m: tarfile.TarInfo, out: IO[bytes] | None,
                   advance: Callable[[int], None]) -> tuple[str, int]:
    f = tf.extractfile(m)
    assert f is not None
    h, count = hashlib.sha256(), 0
    for block in iter(lambda: f.read(BLOCK), b""):
        h.update(block)
        count += len(block)
        if out is not None:
            out.write(block)
        advance(len(block))
    return h.hexdigest(), count


def install_path(member: str, export_name: str | None) -> str:
    """Where a bundle member lands inside the installed workspace."""
    if member.startswith("export/"):
        if not export_name:
            raise IntegrityError("the bundle holds export files but names no export; the bundle is damaged")
        return f"gguf/{export_name}/{member[len('export/'):]}"
    return member


def extract_verified(src: Path, target: Path, progress: bool) -> tuple[BundleManifest, int, str]:
    """Stream ``src`` into the empty folder ``target``, checking every member on the way.

    Each member passes our checks (in ``walk``) and tarfile's own ``data`` filter before a
    byte is written; files are created exclusively (no following links); after the walk
    every written file is hashed again from disk. Returns (manifest, payload bytes, sha256
    of the bundle file).
    """
    written: list[tuple[Path, ManifestEntry]] = []
    data_filter = getattr(tarfile, "data_filter", None)  # Python 3.11.4+ / 3.10.12+

    def sink(m: tarfile.TarInfo, entry: ManifestEntry, manifest: BundleManifest) -> IO[bytes]:
        if data_filter is not None:
            try:
                data_filter(m, str(target))
            except tarfile.FilterError as err:
                raise IntegrityError(f"bundle member {ascii(m.name)} refused by tarfile's data filter: {err}") from None
        dst = target / install_path(entry.path, manifest.export_name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        written.append((dst, entry))
        return os.fdopen(fd, "wb")

    with open(src, "rb") as raw, progress_bar(progress, src.stat().st_size, "installing") as advance:
        f = _WholeFileHash(raw)
        manifest, total = walk(f, sink, advance)  # type: ignore[arg-type]
        while f.read(BLOCK):  # what tarfile left unread (end-of-archive blocks)
            pass
    for dst, entry in written:  # re-hash what reached the disk
        if dst.stat().st_size != entry.size or sha256_file(dst) != entry.sha256:
            raise IntegrityError(f"{dst} does not match the manifest after writing; check the disk and retry.")
    return manifest, total, f.sha.hexdigest()


class _WholeFileHash:
    """Hashes the bundle file itself as tarfile streams it (for the audit record)."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        return data
