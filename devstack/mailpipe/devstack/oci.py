"""Image archives built from files, for a node that can reach no registry.

`ctr images import` takes an archive in the OCI image layout (`index.json`,
`oci-layout`, `blobs/sha256/...`); the same tar also carries Docker's
`manifest.json`, which names the image with `RepoTags`, so either importer
finds the name. Everything is deterministic (mtime 0, sorted entries, uid 0):
the same files give the same digest, so an unchanged image is not re-imported
as a new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: local import only
# containerd reads the image name from this annotation when importing an index.
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
OCI_REF_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageFile:
    """One regular file in the image's single layer."""

    path: str  # inside the image, without a leading slash
    data: bytes
    mode: int = 0o755


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of the image config: what the container runs, as whom."""

    entrypoint: Sequence[str]
    user: str = ""
    env: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    architecture: str = "amd64"


@dataclass(frozen=True)
class Archive:
    """An image archive's bytes and the manifest digest containerd will report."""

    data: bytes
    manifest_digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: Sequence[tuple[str, bytes, int]]) -> bytes:
    """A deterministic tar of regular files (parent directories added, sorted)."""
    buf = io.BytesIO()
    dirs: set[str] = set()
    for path, _, _ in entries:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for path, data, mode in sorted(entries):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_archive(name: str, files: Sequence[ImageFile], config: ImageConfig) -> Archive:
    """An OCI layout + Docker archive of one layer holding `files`, tagged `name`.

    `name` is a full reference (`mailpipe.local/pause:1`): the node pulls
    nothing, so the pod spec names exactly what was imported."""
    if ":" not in name.rsplit("/", 1)[-1]:
        raise ValueError(f"image name {name!r} needs a tag (name:tag): pods refer to it by tag")
    layer = _tar([(f.path.lstrip("/"), f.data, f.mode) for f in files])
    layer_digest = _digest(layer)
    image_config: dict[str, Any] = {
        "architecture": config.architecture,
        "os": "linux",
        "config": {
            "Entrypoint": list(config.entrypoint),
            "Env": list(config.env),
            "Labels": dict(config.labels),
            **({"User": config.user} if config.user else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_blob = _json(image_config)
    config_digest = _digest(config_blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_blob = _json(manifest)
    manifest_digest = _digest(manifest_blob)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "annotations": {CONTAINERD_NAME_ANNOTATION: name, OCI_REF_ANNOTATION: name},
                "platform": {"architecture": config.architecture, "os": "linux"},
            }
        ],
    }
    blob = "blobs/sha256/"
    docker_manifest = [
        {
            "Config": blob + config_digest.removeprefix("sha256:"),
            "RepoTags": [name],
            "Layers": [blob + layer_digest.removeprefix("sha256:")],
        }
    ]
    entries = [
        ("oci-layout", _json({"imageLayoutVersion": OCI_LAYOUT_VERSION}), 0o644),
        ("index.json", _json(index), 0o644),
        ("manifest.json", _json(docker_manifest), 0o644),
        (blob + layer_digest.removeprefix("sha256:"), layer, 0o644),
        (blob + config_digest.removeprefix("sha256:"), config_blob, 0o644),
        (blob + manifest_digest.removeprefix("sha256:"), manifest_blob, 0o644),
    ]
    return Archive(_tar(entries), manifest_digest)


def index_references(index: bytes) -> list[str]:
    """The image names an OCI layout's `index.json` gives its manifests (the
    names `ctr images import` creates), in order: containerd's own annotation
    (`build_archive`'s) or the OCI ref name, a full name as umoci writes it
    (`make image`'s)."""
    names = []
    for manifest in json.loads(index).get("manifests", []):
        annotations = manifest.get("annotations", {})
        name = annotations.get(CONTAINERD_NAME_ANNOTATION) or annotations.get(OCI_REF_ANNOTATION)
        if name:
            names.append(name)
    return names


def archive_references(archive: Path) -> list[str]:
    """The image names in an OCI archive (a tar of the layout) on disk."""
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile("index.json")
        except KeyError:
            member = None
        if member is None:
            raise ValueError(f"{archive}: no index.json, not an OCI image archive")
        return index_references(member.read())
