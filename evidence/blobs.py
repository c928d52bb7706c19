"""Content-addressed, read-only storage of originals and artifacts: `blobs/sha256/ab/cd/<sha256>`.

An original is hashed while it is copied in, written to a temporary file, read back and hashed
again, fsynced, and only then linked to its final name and made read-only. The same bytes
arriving twice are stored once. Nothing in Qarina ever opens a blob for writing afterwards.
Files on disk come in through `put` (or `put_at`, from a folder held open), bytes streamed over
the network through `put_stream`: the same copy, checks and layout behind all.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: 8 MiB chunks: large enough that hashlib releases the GIL and the three copy threads overlap,
#: small enough that the bounded queues hold at most a few dozen MiB.
CHUNK_BYTES = 8 * 1024 * 1024
#: Durability steps: large enough that each fdatasync streams, small enough to overlap hashing.
SYNC_BYTES = 64 * 1024 * 1024
_QUEUE_DEPTH = 4


class IngestRefused(Exception):
    """The path is not a regular file (symlink, FIFO, device, socket, directory): nothing stored."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BlobIntegrityError(Exception):
    """The bytes read back differ from the bytes read in: the copy is discarded."""


class BlobTooLarge(Exception):
    """A stream went past its size cap: nothing stored, the partial copy removed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"more than {max_bytes} bytes")
        self.max_bytes = max_bytes


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size_bytes: int
    #: False when the same bytes were already stored (a duplicate arrival).
    created: bool


def _describe_mode(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character_device"),
        (stat.S_ISBLK, "block_device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "not_a_regular_file"


class BlobStore:
    """The blob folder. Safe for many processes and nodes on one shared mount."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put(self, source: Path) -> StoredBlob:
        """Copy `source` in by content. Symlinks are not followed.

        Raises:
            IngestRefused: `source` is not a regular file.
            BlobIntegrityError: the read-back hash differs from the copy-in hash.
        """
        return self._put_file(source, None)

    def put_at(self, folder_fd: int, name: bytes) -> StoredBlob:
        """Copy the file `name` of the folder open as `folder_fd` in, as `put` copies a path.

        `put` resolves every folder of its path again: one swapped for a symlink since the
        caller looked would send it to the link's target. A caller that walked down by
        descriptor (a drop folder, a registration by path) hands its folder over instead.

        Raises:
            IngestRefused: `name` is not a regular file.
            BlobIntegrityError: the read-back hash differs from the copy-in hash.
        """
        return self._put_file(name, folder_fd)

    def _put_file(self, source: Path | bytes, folder_fd: int | None) -> StoredBlob:
        before = os.lstat(source, dir_fd=folder_fd)
        if not stat.S_ISREG(before.st_mode):
            raise IngestRefused(_describe_mode(before.st_mode))
        # O_NONBLOCK: if the path was swapped for a FIFO after lstat, open must not hang.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            source_fd = os.open(source, flags, dir_fd=folder_fd)
        except OSError as error:
            if error.errno == 40:  # ELOOP: it became a symlink since lstat
                raise IngestRefused("symlink") from error
            raise
        try:
            opened = os.fstat(source_fd)
            if not stat.S_ISREG(opened.st_mode):
                raise IngestRefused(_describe_mode(opened.st_mode))
            os.set_blocking(source_fd, True)
            return self._copy_in(lambda: os.read(source_fd, CHUNK_BYTES))
        finally:
            os.close(source_fd)

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> StoredBlob:
        """Store bytes that arrive in pieces (an HTTP upload) by content, as `put` stores a file.

        The pieces are hashed as they are written into the temporary area, so a stream is never
        held in memory nor written twice; an empty piece ends nothing (only the end of
        `chunks` does). Whatever `chunks` raises (a client gone mid-upload) removes the
        partial copy and propagates.

        Raises:
            BlobTooLarge: the stream went past `max_bytes`; raised as soon as it does, without
                reading the rest.
            BlobIntegrityError: the read-back hash differs from the copy-in hash.
        """
        pieces = iter(chunks)
        received = 0

        def read() -> bytes:
            nonlocal received
            for piece in pieces:
                if piece:
                    received += len(piece)
                    if max_bytes is not None and received > max_bytes:
                        raise BlobTooLarge(max_bytes)
                    return piece
            return b""

        return self._copy_in(read)

    def _copy_in(self, read: Callable[[], bytes]) -> StoredBlob:
        """Copy what `read` returns until it returns b"" into the store by content.

        The temporary copy goes whatever happens, also when the copy was whole but its name
        under the hash could not be made (a full disk refuses the folder or the link too): a
        full disk must not fill further with copies nobody will ever link.
        """
        self._tmp.mkdir(parents=True, exist_ok=True)
        temp = self._tmp / f"{uuid.uuid4().hex}.part"
        temp_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                sha256, size = _copy_hash_and_verify(read, temp_fd, temp)
            finally:
                os.close(temp_fd)
            os.chmod(temp, 0o444)
            final = self.path_for(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                # link, not rename: an existing blob (same bytes) is never replaced.
                os.link(temp, final)
                created = True
            except FileExistsError:
                created = False
        finally:
            temp.unlink(missing_ok=True)
        if created:
            _fsync_dir(final.parent)
        return StoredBlob(sha256, size, created)

    def rehash(self, sha256: str) -> str:
        """The SHA-256 of a stored blob as it is on disk now (fixity check)."""
        return file_sha256(self.path_for(sha256))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file as it is on disk now, read in CHUNK_BYTES pieces."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_chunks(
    temp_fd: int,
    to_write: queue.Queue[bytes | None],
    to_verify: queue.Queue[tuple[int, int] | None],
    failures: list[BaseException],
) -> None:
    """Write, and make each SYNC_BYTES durable as it goes.

    Syncing in steps keeps the disk busy while the reader hashes (one fsync at the end would
    leave the disk idle until then), and only synced spans are handed to the read-back, which
    drops them from the page cache and so reads what the disk really holds.
    """
    offset = synced = 0
    chunk: bytes | None = b""
    try:
        while (chunk := to_write.get()) is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(temp_fd, view) :]
            offset += len(chunk)
            if offset - synced >= SYNC_BYTES:
                os.fdatasync(temp_fd)
                to_verify.put((synced, offset - synced))
                synced = offset
        os.fsync(temp_fd)
        if offset > synced:
            to_verify.put((synced, offset - synced))
    except BaseException as error:
        failures.append(error)
        # Keep taking chunks so the thread reading the source never blocks on a full queue,
        # but only up to the end marker: a failure at the last fsync (ENOSPC or EIO, as a
        # network or thin-provisioned disk reports it) comes after the marker was taken, and
        # waiting for another would hang the copy for good.
        while chunk is not None:
            chunk = to_write.get()
    finally:
        to_verify.put(None)


def _read_back(
    temp: Path,
    to_verify: queue.Queue[tuple[int, int] | None],
    digest: hashlib._Hash,
    failures: list[BaseException],
) -> None:
    read_fd: int | None = None
    try:
        # Inside the handler: a descriptor refused (EMFILE) must reach the caller as what it
        # is, and the writer, blocked on a full queue, must still be drained.
        read_fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        while (span := to_verify.get()) is not None:
            start, length = span
            # The span is on disk (fdatasync); evicting it makes the read below a media read.
            os.posix_fadvise(read_fd, start, length, os.POSIX_FADV_DONTNEED)
            end = start + length
            while start < end:
                data = os.pread(read_fd, min(CHUNK_BYTES, end - start), start)
                if not data:
                    raise BlobIntegrityError("short read-back")
                digest.update(data)
                start += len(data)
    except BaseException as error:
        failures.append(error)
        while to_verify.get() is not None:
            pass
    finally:
        if read_fd is not None:
            os.close(read_fd)


def _copy_hash_and_verify(read: Callable[[], bytes], temp_fd: int, temp: Path) -> tuple[str, int]:
    """Copy with three overlapping threads: read+hash, write+sync, read-back-from-disk+hash.

    `read` returns the next piece of the source, b"" at its end.

    The read-back runs on a second descriptor a few synced spans behind the writer, so the
    verify read overlaps the copy instead of being a second pass (`qarina bench ingest`
    measures what that costs against `openssl dgst` and `dd conv=fsync`).
    """
    to_write: queue.Queue[bytes | None] = queue.Queue(_QUEUE_DEPTH)
    to_verify: queue.Queue[tuple[int, int] | None] = queue.Queue(_QUEUE_DEPTH * 4)
    failures: list[BaseException] = []
    verify_digest = hashlib.sha256()
    threads = [
        threading.Thread(target=_write_chunks, args=(temp_fd, to_write, to_verify, failures)),
        threading.Thread(target=_read_back, args=(temp, to_verify, verify_digest, failures)),
    ]
    for thread in threads:
        thread.start()
    source_digest = hashlib.sha256()
    size = 0
    try:
        while chunk := read():
            source_digest.update(chunk)
            size += len(chunk)
            to_write.put(chunk)
    finally:
        to_write.put(None)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    sha256 = source_digest.hexdigest()
    if verify_digest.hexdigest() != sha256:
        raise BlobIntegrityError("read-back hash differs from copy-in hash")
    return sha256, size
