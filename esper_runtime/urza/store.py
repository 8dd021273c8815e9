"""Content-addressed, immutable artifact files (``.esper/artifacts`` by default).

``put`` writes the bytes under their SHA-256 (write to a temporary name, fsync, rename: a reader never sees a
partial file) and records ``artifact_id -> (sha256, kind)``. ``get_artifact`` returns the bytes with the hash that
was *declared* at ``put``; the reader (Kasmina's kernel cache) recomputes and compares before using anything, so a
file corrupted on disk is caught where it matters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from streams.exceptions import EsperError
from esper_runtime.durable import write_durably
from esper_runtime.urza.exceptions import ArtifactNotFound

__all__ = ["ArtifactNotFound", "ArtifactStore", "KernelArtifact", "MAX_ARTIFACT_BYTES"]

# far above any kernel bundle (a CPU bundle is ~2 MB), far below what would hurt to hold in memory: a blob larger
# than this is refused by its size on disk, before a byte of it is read
MAX_ARTIFACT_BYTES = 128 << 20

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class KernelArtifact:
    artifact_id: str
    sha256: str  # as declared when stored
    kind: str  # how to build a module from the bytes, e.g. esper.reference.v1
    data: bytes


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _check_id(self, artifact_id: str) -> None:
        if not _SAFE_ID.match(artifact_id):
            raise ArtifactNotFound(f"invalid artifact id {artifact_id!r}")

    def put(self, artifact_id: str, kind: str, data: bytes, meta: dict | None = None) -> str:
        self._check_id(artifact_id)
        if len(data) > MAX_ARTIFACT_BYTES:
            raise EsperError(f"artifact {artifact_id} is {len(data) >> 20} MiB, over the {MAX_ARTIFACT_BYTES >> 20} "
                             "MiB an artifact may be")
        digest = hashlib.sha256(data).hexdigest()
        blob = self.root / "blobs" / digest[:2] / digest
        if not blob.exists():
            write_durably(blob, data)
        entry = json.dumps({"artifact_id": artifact_id, "sha256": digest, "kind": kind, "meta": meta or {}}).encode()
        index = self.root / "index" / f"{artifact_id}.json"
        if index.exists():
            if json.loads(index.read_bytes())["sha256"] != digest:
                raise EsperError(f"artifact {artifact_id} already exists with other content: artifacts are immutable")
            return digest
        write_durably(index, entry)
        return digest

    def get_artifact(self, artifact_id: str) -> KernelArtifact:
        self._check_id(artifact_id)
        try:
            entry = self._entry(artifact_id)
            blob = self._blob(entry["sha256"])
            if blob.stat().st_size > MAX_ARTIFACT_BYTES:
                raise ArtifactNotFound(f"artifact {artifact_id} is {blob.stat().st_size >> 20} MiB on disk, over the "
                                       f"{MAX_ARTIFACT_BYTES >> 20} MiB an artifact may be: refused unread")
            data = blob.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {artifact_id} in {self.root}") from None
        return KernelArtifact(artifact_id, entry["sha256"], entry["kind"], data)

    def _entry(self, artifact_id: str) -> dict:
        """The index entry, refused unless it is what ``put`` writes (nothing it names is read before that)."""
        try:
            entry = json.loads((self.root / "index" / f"{artifact_id}.json").read_bytes())
        except (ValueError, RecursionError):
            raise ArtifactNotFound(f"the index entry of {artifact_id} is not JSON: refused") from None
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _DIGEST.match(entry["sha256"])
                and isinstance(entry.get("kind"), str)):
            raise ArtifactNotFound(f"the index entry of {artifact_id} does not name a SHA-256 digest: refused")
        return entry

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def exists(self, artifact_id: str) -> bool:
        self._check_id(artifact_id)
        return (self.root / "index" / f"{artifact_id}.json").exists()

    def meta(self, artifact_id: str) -> dict:
        self._check_id(artifact_id)
        return json.loads((self.root / "index" / f"{artifact_id}.json").read_bytes()).get("meta", {})

    def blob_path(self, artifact_id: str) -> Path:
        self._check_id(artifact_id)
        return self._blob(self._entry(artifact_id)["sha256"])
