"""Image archives for a node without a registry: valid layout, stable digests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from mailpipe.devstack import oci

FILES = [oci.ImageFile("pause", b"\x7fELF fake binary"), oci.ImageFile("etc/x.conf", b"k=v", 0o644)]
CONFIG = oci.ImageConfig(entrypoint=["/pause"], user="65535")


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_every_blob_is_named_by_its_digest_and_the_index_names_the_image() -> None:
    archive = oci.build_archive("mailpipe.local/pause:1", FILES, CONFIG)
    members = _members(archive.data)
    for name, data in members.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(members["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == archive.manifest_digest
    assert entry["annotations"][oci.CONTAINERD_NAME_ANNOTATION] == "mailpipe.local/pause:1"
    manifest = json.loads(members["blobs/sha256/" + archive.manifest_digest[7:]])
    config = json.loads(members["blobs/sha256/" + manifest["config"]["digest"][7:]])
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535"
    # Uncompressed layer: its digest is also its diff id.
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    (docker,) = json.loads(members["manifest.json"])
    assert docker["RepoTags"] == ["mailpipe.local/pause:1"]


def test_the_layer_holds_the_files_with_their_modes_owned_by_root() -> None:
    archive = oci.build_archive("mailpipe.local/pause:1", FILES, CONFIG)
    members = _members(archive.data)
    index = json.loads(members["index.json"])
    manifest = json.loads(members["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    layer = members["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        by_name = {m.name: m for m in tar.getmembers()}
    assert by_name["pause"].mode == 0o755 and by_name["etc/x.conf"].mode == 0o644
    assert by_name["etc"].isdir()
    assert {(m.uid, m.gid, m.mtime) for m in by_name.values()} == {(0, 0, 0)}


def test_same_files_same_digest_changed_file_new_digest() -> None:
    first = oci.build_archive("mailpipe.local/pause:1", FILES, CONFIG)
    again = oci.build_archive("mailpipe.local/pause:1", list(reversed(FILES)), CONFIG)
    changed = oci.build_archive("mailpipe.local/pause:1", [oci.ImageFile("pause", b"v2")], CONFIG)
    assert first.data == again.data
    assert changed.manifest_digest != first.manifest_digest


def test_an_image_name_without_a_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a tag"):
        oci.build_archive("mailpipe.local:5000/pause", FILES, CONFIG)


def test_the_names_an_archive_gives_are_read_back(tmp_path: Path) -> None:
    """What `Node.import_image` expects containerd to list: this module's
    archives (containerd's annotation) and umoci's (the OCI ref name)."""
    ours = tmp_path / "pause.oci.tar"
    ours.write_bytes(oci.build_archive("mailpipe.local/pause:1", FILES, CONFIG).data)
    assert oci.archive_references(ours) == ["mailpipe.local/pause:1"]
    umoci_index = {
        "manifests": [
            {"annotations": {oci.OCI_REF_ANNOTATION: "mailpipe.local/mailpipe:0.1.0-abc"}},
            {"annotations": {oci.OCI_REF_ANNOTATION: "mailpipe.local/mailpipe:0.1.0"}},
            {"digest": "sha256:unnamed"},
        ]
    }
    assert oci.index_references(json.dumps(umoci_index).encode()) == [
        "mailpipe.local/mailpipe:0.1.0-abc",
        "mailpipe.local/mailpipe:0.1.0",
    ]


def test_an_archive_without_an_index_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "not-oci.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("manifest.json"), io.BytesIO(b""))
    with pytest.raises(ValueError, match=r"no index\.json, not an OCI image archive"):
        oci.archive_references(archive)
