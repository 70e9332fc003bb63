"""The image's two recipes agree, and the one built here runs as the chart runs it.

The Dockerfile and `scripts/build-image.sh` (mmdebstrap + umoci, no container
engine) must give the same image: same Debian release and Python, same user,
entry point, environment and working directory, the same packages and install
steps. The fast tests read both recipes; the `image` tests build the image
(minutes cold, seconds warm) and run it without a container engine: its root
filesystem unpacked by umoci, mounted read-only in a mount namespace, entered
with chroot as the image's user, as the chart's securityContext runs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack import harness, image, paths
from mailpipe.operator.pool import RELAY_UID
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PACKAGES = image.debian_packages((ROOT / image.PACKAGE_LIST).read_text())
BUILD_TIMEOUT_SECONDS = 1800  # cold: Debian's packages and the wheels downloaded on a busy machine
RUN_TIMEOUT_SECONDS = 120  # one command in the image: imports of kopf or the relay, loaded machine
CONTAINERD_START_SECONDS = 60.0
# pytest-timeout's default (pyproject) is below a cold build, and the module's
# build fixture is charged to whichever test asks for it first.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_SECONDS + RUN_TIMEOUT_SECONDS)
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--fork"]  # a mount namespace


# -- the recipes, read ---------------------------------------------------------


def test_the_final_stage_gives_the_config_and_the_build_stage_does_not() -> None:
    text = textwrap.dedent(
        """\
        # comment
        ARG DEBIAN_RELEASE=trixie
        FROM debian:${DEBIAN_RELEASE}-slim AS build
        WORKDIR /src
        USER 0
        ENV BUILD_ONLY=1
        FROM debian:${DEBIAN_RELEASE}-slim
        LABEL a="one two" \\
              b=three
        USER 10001
        ENV PATH=/opt/x/bin:/usr/bin
        ENV A=1 B="two words"
        EXPOSE 8080 53/udp
        CMD ["ignored"]
        ENTRYPOINT ["mailpipe"]
        CMD ["--help"]
        """
    )
    assert image.parse_dockerfile(text) == image.ImageConfig(
        debian_release="trixie",
        user="10001",
        entrypoint=("mailpipe",),
        cmd=("--help",),  # a CMD before ENTRYPOINT is reset by it, as Docker does
        working_dir="",
        env={"PATH": "/opt/x/bin:/usr/bin", "A": "1", "B": "two words"},
        labels={"a": "one two", "b": "three"},
        exposed_ports=("8080/tcp", "53/udp"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM debian:bookworm-slim\nUSER 1\n", "ARG DEBIAN_RELEASE"),
        ("ARG DEBIAN_RELEASE=bookworm\nFROM x\nENTRYPOINT mailpipe\n", "exec form"),
        ("ARG DEBIAN_RELEASE=bookworm\nFROM x\nENV A 1\n", "KEY=value"),
    ],
    ids=["no-release", "shell-form", "legacy-env"],
)
def test_what_the_recipe_cannot_follow_is_refused(text: str, message: str) -> None:
    with pytest.raises(image.RecipeError, match=message):
        image.parse_dockerfile(text)


def test_both_recipes_install_the_same_packages_the_same_way() -> None:
    """The Dockerfile installs image/debian-packages.txt with image/install.sh on
    Debian's <release>-slim in both stages; the script gives mmdebstrap that
    list and runs that install.sh; both wheel the project with pip's wheel."""
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms and set(froms) == {"debian:${DEBIAN_RELEASE}-slim"}, froms
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "/tmp/image/debian-packages.txt" in final and "xargs apt-get install" in final
    assert "sh /tmp/image/install.sh /tmp/wheels" in final
    assert re.search(r"^RUN pip wheel .* \. pip$", DOCKERFILE, re.M)
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert '--include="$(recipe packages)"' in script
    assert "install.sh /tmp/mailpipe/wheels" in script
    assert '--wheel-dir "$work/wheels" "$work/src" pip' in script


def test_one_python_and_one_user_across_recipes_chart_and_operator() -> None:
    assert image.python_version(PACKAGES) == "3.11"
    config = image.parse_dockerfile(DOCKERFILE)
    install = (ROOT / "image" / "install.sh").read_text()
    assert f"mailpipe:x:{config.user}:{config.user}:" in install
    assert int(config.user) == RELAY_UID
    chart = (ROOT / "helm" / "mailpipe" / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {config.user}" in chart
    [script] = config.entrypoint
    assert script in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert config.env["PATH"].startswith("/opt/mailpipe/bin:")  # install.sh's venv


@pytest.mark.parametrize(
    ("packages", "message"),
    [(["python3.11", "python3.12"], "exactly one"), (["tzdata"], "exactly one")],
    ids=["two", "none"],
)
def test_the_package_list_names_one_python(packages: list[str], message: str) -> None:
    with pytest.raises(image.RecipeError, match=message):
        image.python_version(packages)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_digest_follows_the_image_inputs_only(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "relay").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    source = tmp_path / "relay" / "a.py"
    source.write_text("x = 1\n")
    (tmp_path / "tests" / "test_a.py").write_text("")
    git(tmp_path, "add", ".")

    def digest() -> str:
        return image.inputs_digest(tmp_path, image.input_files(tmp_path))

    first = digest()
    (tmp_path / "tests" / "test_a.py").write_text("changed")  # not an input
    (tmp_path / "relay" / "__pycache__").mkdir()
    (tmp_path / "relay" / "__pycache__" / "a.pyc").write_text("ignored")
    assert digest() == first
    source.write_text("x = 2\n")
    assert digest() != first
    source.write_text("x = 1\n")
    assert digest() == first
    (tmp_path / "relay" / "new.py").write_text("")  # untracked sources count
    with_new = digest()
    assert with_new != first
    (tmp_path / "relay" / "new.py").chmod(0o755)
    assert digest() not in (first, with_new)


# -- the image, built and run --------------------------------------------------


@dataclass(frozen=True)
class Built:
    archive: Path
    reference: str
    version_reference: str
    output: str


def build() -> Built:
    """Run the recipe (cached, or built); what it names in images/mailpipe.env."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    env_file = paths.cache_dir() / "images" / "mailpipe.env"
    facts = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    return Built(
        Path(facts["MAILPIPE_IMAGE_OCI"]),
        facts["MAILPIPE_IMAGE"],
        facts["MAILPIPE_IMAGE_VERSION_TAG"],
        out.stdout,
    )


@pytest.fixture(scope="module")
def built() -> Built:
    return build()


@pytest.fixture(scope="module")
def layout(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The OCI layout inside the archive (removed after the module: tens of MB)."""
    target = tmp_path_factory.mktemp("layout")
    with tarfile.open(built.archive) as archive:
        archive.extractall(target, filter="data")
    yield target
    shutil.rmtree(target)


@pytest.fixture(scope="module")
def bundle(built: Built, layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`umoci unpack`: the root filesystem and a runtime config.json from the image
    config (removed after the module: hundreds of MB)."""
    target = tmp_path_factory.mktemp("bundle") / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{built.reference}", str(target)],
        check=True,
        capture_output=True,
    )
    yield target
    shutil.rmtree(target.parent)


def blob(layout: Path, digest: str) -> dict[str, Any]:
    algorithm, _, hexdigest = digest.partition(":")
    loaded: dict[str, Any] = json.loads((layout / "blobs" / algorithm / hexdigest).read_text())
    return loaded


def in_image(bundle: Path, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the image as its config says (user, environment, working
    directory), the root filesystem read-only, without a container engine:
    a private mount namespace bind-mounts it read-only, chroot enters it."""
    process = json.loads((bundle / "config.json").read_text())["process"]
    uid, gid = process["user"]["uid"], process["user"]["gid"]
    enter = (
        "root=$1 user=$2 groups=$3; shift 3; "
        'mount --bind "$root" "$root" && mount -o remount,bind,ro "$root" && '
        'exec chroot --userspec="$user" --groups="$groups" "$root" "$@"'
    )
    # The image's own env(1): only the image's environment, its working directory.
    outside = [*UNSHARE, "sh", "-c", enter, "sh", str(bundle / "rootfs"), f"{uid}:{gid}", str(gid)]
    inside = ["/usr/bin/env", "-i", "-C", process["cwd"] or "/", *process["env"], *argv]
    return subprocess.run(
        [*outside, *inside],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )


@pytest.mark.image
def test_the_built_image_has_the_dockerfiles_config(built: Built, layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    names = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert names == {built.reference, built.version_reference}
    manifest = blob(layout, index["manifests"][0]["digest"])
    assert len(manifest["layers"]) == 1  # one root filesystem, nothing on top
    oci = blob(layout, manifest["config"]["digest"])
    assert (oci["os"], oci["architecture"]) == ("linux", "amd64")
    config = oci["config"]
    wanted = image.parse_dockerfile(DOCKERFILE)
    assert config["User"] == wanted.user == str(RELAY_UID)
    assert tuple(config["Entrypoint"]) == wanted.entrypoint
    assert tuple(config["Cmd"]) == wanted.cmd
    assert config.get("WorkingDir", "") == wanted.working_dir
    assert config["Env"] == [f"{k}={v}" for k, v in wanted.env.items()]
    assert set(config["ExposedPorts"]) == set(wanted.exposed_ports)
    assert wanted.labels.items() <= config["Labels"].items()
    assert config["Labels"]["io.mailpipe.image.debian-release"] == wanted.debian_release
    assert config["Labels"]["io.mailpipe.image.python"] == image.python_version(PACKAGES)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert config["Labels"]["org.opencontainers.image.version"] == version
    assert built.version_reference.endswith(f":{version}")


@pytest.mark.image
def test_the_image_runs_read_only_as_its_user_with_the_declared_python(bundle: Path) -> None:
    bundle_dir = bundle
    process = json.loads((bundle_dir / "config.json").read_text())["process"]
    assert process["user"] == {"uid": RELAY_UID, "gid": RELAY_UID}

    # The entry point with its default arguments, exactly as the config says.
    helped = in_image(bundle_dir, process["args"])
    assert helped.returncode == 0, helped.stderr
    assert "operator" in helped.stdout and "relay" in helped.stdout
    # No dev stack: `dev`, `demo` are not offered; every production endpoint is.
    assert "{operator,relay,feedback,unsubscribe,submission}" in helped.stdout
    for sub in ("operator", "relay", "feedback", "unsubscribe", "submission"):
        sub_help = in_image(bundle_dir, ["mailpipe", sub, "--help"])
        assert sub_help.returncode == 0, sub_help.stderr

    probe = textwrap.dedent(
        """\
        import errno, json, os, pwd, sys
        import crc32c, kafka.codec
        from mailpipe.operator.render_check import check_audience
        try:
            open("/written", "w")
            read_only = False
        except OSError as exc:
            read_only = exc.errno == errno.EROFS
        spec = {"poolRef": "p", "from": {"address": "n@example.com"}, "subject": "s",
                 "text": "t", "audience": {"inline": [{"address": "a@x.test"}]}}
        audience = check_audience(spec, None, "ns/c", "u", 0.0)
        print(json.dumps({
            "python": "%d.%d" % sys.version_info[:2],
            "executable": sys.executable,
            "uid": os.getuid(), "gid": os.getgid(), "user": pwd.getpwuid(os.getuid()).pw_name,
            "read_only": read_only,
            "codecs": [kafka.codec.has_snappy(), kafka.codec.has_lz4(), kafka.codec.has_zstd()],
            "audience": [r.address for r in audience.recipients],
        }))
        """
    )
    ran = in_image(bundle_dir, ["python", "-c", probe])
    assert ran.returncode == 0, ran.stderr
    facts = json.loads(ran.stdout)
    assert facts["python"] == image.python_version(PACKAGES)
    assert facts["executable"] == "/opt/mailpipe/bin/python"
    assert (facts["uid"], facts["gid"], facts["user"]) == (RELAY_UID, RELAY_UID, "mailpipe")
    assert facts["read_only"] is True
    assert facts["codecs"] == [True, True, True]  # Kafka's compressed batches can be read
    assert facts["audience"] == ["a@x.test"]  # the operator's check needs no writable disk
    installed = (bundle_dir / "rootfs" / "var" / "lib" / "dpkg" / "status").read_text()
    assert f"Package: python{image.python_version(PACKAGES)}\n" in installed
    assert not (bundle_dir / "rootfs" / "opt" / "mailpipe" / "bin" / "pip").exists()
    assert not list((bundle_dir / "rootfs" / "opt" / "mailpipe").rglob("mailpipe/devstack"))


@pytest.mark.image
def test_unchanged_sources_reuse_the_archive(built: Built) -> None:
    again = build()
    assert again.archive == built.archive
    assert "up to date" in again.output, again.output


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A containerd of this test's own (Debian's, as the node runs), CRI off: its socket."""
    state = tmp_path / "containerd"
    state.mkdir()
    # A unix socket's path has at most 104 bytes here, and pytest-xdist's
    # worker directories (popen-gwN/) pushed this one's over: a short one.
    sockets = Path(tempfile.mkdtemp(prefix="ctrd-"))
    socket = sockets / "containerd.sock"
    config = state / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{state / "root"}"\nstate = "{state / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    child = harness.start(
        "containerd",
        [str(paths.system_binary("containerd")), "--config", str(config)],
        tmp_path / "containerd.log",
    )
    try:
        wait_for(socket.exists, CONTAINERD_START_SECONDS, "containerd's socket", child)
        yield socket
    finally:
        child.stop()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.image
def test_containerd_imports_the_archive_under_both_names(built: Built, containerd: Path) -> None:
    ctr = [str(paths.system_binary("ctr")), "--address", str(containerd), "-n", "k8s.io"]
    imported = subprocess.run(
        [*ctr, "images", "import", str(built.archive)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run(
        [*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {built.reference, built.version_reference} <= set(listed), listed
