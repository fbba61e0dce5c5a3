#!/usr/bin/env bash
# Build the reconciler's image without a Docker engine: Debian's buildah (vfs storage, chroot
# isolation: no daemon, no user namespaces, no overlayfs needed) on a base made from Debian's
# packages with mmdebstrap. Everything is cached outside the repository, in
# ${VMSR_CACHE_DIR:-~/.cache/vm-storage-reconciler}/image: the base's root filesystem
# (a tarball, keyed by what it is made of), buildah's storage (the base image and every build
# layer: a warm build reuses all but the layers whose inputs changed).
#
#   deploy/image/build.sh            # prints the image name (localhost/vm-storage-reconciler:VERSION)
#   deploy/image/build.sh --print-storage   # the buildah global options to reach the image
#
# Needs: buildah and mmdebstrap (`apt-get install buildah mmdebstrap`; .ci/run installs them),
# root (or a user buildah can run as), and the Debian mirror and PyPI (pip, through the host's
# CA bundle when there is one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${VMSR_CACHE_DIR:-$HOME/.cache/vm-storage-reconciler}/image"
SUITE=bookworm
MIRROR="${VMSR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,git,ca-certificates
STORAGE=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)

if [[ "${1:-}" == "--print-storage" ]]; then
    printf '%s\n' "${STORAGE[@]}"
    exit 0
fi

for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool is not installed: apt-get install buildah mmdebstrap" >&2
        exit 2
    }
done
mkdir -p "$CACHE"
say() { echo "image: $*" >&2; }

# -- the base: Debian's Python 3.11, git and CA certificates, nothing else -------------------
# Keyed by everything it is made of; a new key builds a new base (the Debian suite moves with
# security updates: delete $CACHE/base-*.tar to take them).
MMDEBSTRAP=(--variant=minbase --format=tar --include="$PACKAGES"
    --aptopt='APT::Install-Recommends "false"'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*'
    "$SUITE")
KEY="$(printf '%s\n' "${MMDEBSTRAP[@]}" "$MIRROR" | sha256sum | cut -c1-12)"
BASE_TAR="$CACHE/base-$SUITE-$KEY.tar"
BASE_IMAGE="localhost/vm-storage-reconciler-base:$SUITE-$KEY"
exec 9>"$CACHE/.lock"
flock 9  # one build at a time per cache
if ! buildah "${STORAGE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ ! -s "$BASE_TAR" ]]; then
        say "building the base with mmdebstrap ($SUITE: $PACKAGES)"
        started=$SECONDS
        nice mmdebstrap --quiet "${MMDEBSTRAP[@]}" "$BASE_TAR.tmp" "$MIRROR"
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        find "$CACHE" -maxdepth 1 -name 'base-*' ! -name "${BASE_TAR##*/}" -exec rm -rf {} +
        say "base built in $((SECONDS - started)) s: $(du -h "$BASE_TAR" | cut -f1) tarball"
    fi
    say "importing the base as $BASE_IMAGE"
    container="$(buildah "${STORAGE[@]}" from scratch)"
    buildah "${STORAGE[@]}" add "$container" "$BASE_TAR" / >/dev/null
    buildah "${STORAGE[@]}" config --env PATH=/usr/local/bin:/usr/bin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/sh "$container"
    buildah "${STORAGE[@]}" commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
fi

# -- the image -------------------------------------------------------------------------------
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml")"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- Containerfile pyproject.toml README.md reconciler templates deploy/image 2>/dev/null)" ]]; then
    REVISION="$REVISION-dirty"
fi
IMAGE="localhost/vm-storage-reconciler:$VERSION"
# The build context: only what the Containerfile copies (not .git, .venv, caches).
CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
mkdir -p "$CONTEXT/deploy/image"
cp "$ROOT/Containerfile" "$ROOT/pyproject.toml" "$ROOT/README.md" "$CONTEXT/"
cp "$ROOT"/deploy/image/*.lock "$CONTEXT/deploy/image/"
(cd "$ROOT" && tar --exclude=__pycache__ -cf - reconciler templates) | tar -xf - -C "$CONTEXT"
# The same mtimes every time, so buildah's layer cache sees only content changes.
find "$CONTEXT" -exec touch -h -d @0 {} +
# Everything the build reads, hashed: an image built from the same is up to date (a warm run
# with nothing changed costs a hash, not a buildah run; vfs copies layers even on cache hits).
DIGEST="$( (cd "$CONTEXT" && find . -type f -print0 | sort -z | xargs -0 sha256sum; \
    echo "$BASE_IMAGE") | sha256sum | cut -c1-16)"
LABEL=dev.vmstorage.build-input
if [[ "$(buildah "${STORAGE[@]}" inspect --type image \
        --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null)" == "$DIGEST" ]]; then
    say "$IMAGE is up to date (build input $DIGEST)"
    echo "$IMAGE"
    exit 0
fi
CA=()
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -s "$bundle" ]]; then
        CA=(--volume "$bundle:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
        break
    fi
done
say "building $IMAGE (revision $REVISION) on $BASE_IMAGE"
started=$SECONDS
BUD=(bud ${VMSR_IMAGE_VERBOSE:---quiet} --isolation chroot --layers --build-arg "BASE=$BASE_IMAGE"
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "${CA[@]}"
    --label "$LABEL=$DIGEST"
    --file "$CONTEXT/Containerfile")
# The wheel stage first, tagged, so its cached layers are not pruned as dangling below.
nice buildah "${STORAGE[@]}" "${BUD[@]}" --target wheel \
    --tag "localhost/vm-storage-reconciler-wheel:$VERSION" "$CONTEXT" >&2
nice buildah "${STORAGE[@]}" "${BUD[@]}" --tag "$IMAGE" "$CONTEXT" >&2
say "built in $((SECONDS - started)) s"
# Dangling layers of earlier builds (a changed source tree) and earlier bases are not kept.
for old in $(buildah "${STORAGE[@]}" images --format '{{.Name}}:{{.Tag}}' \
        | grep '^localhost/vm-storage-reconciler-base:' | grep -vx "$BASE_IMAGE"); do
    buildah "${STORAGE[@]}" rmi "$old" >/dev/null 2>&1 || true
done
buildah "${STORAGE[@]}" rmi --prune >/dev/null 2>&1 || true
echo "$IMAGE"
