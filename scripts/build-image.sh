#!/usr/bin/env bash
# Builds weir's container image offline, from a weir binary already built on this machine: no base
# image is pulled. The image holds only the binary, the shared libraries it links (as `ldd` lists
# them, with the dynamic loader), CA certificates, /etc/passwd and /etc/group with the nonroot user
# 65532, and writable /tmp. The result is one archive that is both an OCI image layout
# (index.json, blobs/) and a docker-archive (manifest.json): `podman load -i` and `docker load -i`
# read it. The Dockerfile at the repository root builds the same image with a registry at hand.
#
# Usage: scripts/build-image.sh [--binary PATH] [--output FILE] [--tag REF]
#   --binary  the weir binary (default target/release/weir)
#   --output  the archive (default target/image/weir-image.tar)
#   --tag     the image reference (default: $IMAGE_REPOSITORY:<weir --version>, IMAGE_REPOSITORY
#             defaults to ghcr.io/weir-dev/weir, the image the chart and the TrafficInfra default name)
set -euo pipefail
cd "$(dirname "$0")/.."

binary=target/release/weir
output=target/image/weir-image.tar
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "build-image.sh: $binary is not an executable (build it first: cargo build --release --bin weir)" >&2; exit 1; }

version=$("$binary" --version | awk '{print $2}')
[ -n "$version" ] || { echo "build-image.sh: $binary --version printed no version" >&2; exit 1; }
tag=${tag:-${IMAGE_REPOSITORY:-ghcr.io/weir-dev/weir}:$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Reproducible: file times and the creation date are the commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
source_url=${IMAGE_SOURCE:-https://github.com/weir-dev/weir}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca_bundle" ] || { echo "build-image.sh: no CA bundle at $ca_bundle (apt-get install ca-certificates, or set CA_BUNDLE)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
install -m 0755 "$binary" "$root/usr/local/bin/weir"
# Every library at the path the loader will look for it (symlinks resolved to their files).
libs=$(ldd "$binary" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}')
[ -n "$libs" ] || { echo "build-image.sh: ldd found no libraries for $binary (a static binary needs none; this script expects a dynamic one)" >&2; exit 1; }
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

mkdir -p "$(dirname "$output")"
python3 - "$root" "$output" "$tag" "$version" "$revision" "$source_url" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile

root, output, tag, version, revision, source = sys.argv[1:7]
epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

# The layer: every file owned by root (65532 owns its home), fixed times, sorted: reproducible.
layer_buf = io.BytesIO()
with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [None] + sorted(filenames) + dirnames:
            if name is None:
                path = dirpath
                if path == root:
                    continue
            else:
                path = os.path.join(dirpath, name)
                if os.path.isdir(path):
                    continue
            arc = os.path.relpath(path, root)
            info = tar.gettarinfo(path, arcname=arc)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = epoch
            if arc == "tmp":
                info.mode = 0o1777
            elif arc == "home/nonroot":
                info.uid = info.gid = 65532
                info.mode = 0o700
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
layer = layer_buf.getvalue()
layer_digest = hashlib.sha256(layer).hexdigest()

labels = {
    "org.opencontainers.image.title": "weir",
    "org.opencontainers.image.description": "Multi-cluster, DNS-weighted traffic controller for Kubernetes with an Envoy xDS control plane",
    "org.opencontainers.image.version": version,
    "org.opencontainers.image.source": source,
    "org.opencontainers.image.revision": revision,
    "org.opencontainers.image.licenses": "Apache-2.0",
    "org.opencontainers.image.ref.name": tag,
}
created = "1970-01-01T00:00:00Z" if epoch == 0 else __import__("datetime").datetime.fromtimestamp(epoch, __import__("datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
config = {
    "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
    "os": "linux",
    "created": created,
    "config": {
        "User": "65532:65532",
        "Entrypoint": ["weir"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/home/nonroot"],
        "WorkingDir": "/home/nonroot",
        "Labels": labels,
    },
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    "history": [{"created": created, "created_by": "scripts/build-image.sh"}],
}
config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
config_digest = hashlib.sha256(config_bytes).hexdigest()
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer_digest}", "size": len(layer)}],
    "annotations": {"org.opencontainers.image.version": version, "org.opencontainers.image.source": source, "org.opencontainers.image.revision": revision},
}
manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{manifest_digest}",
        "size": len(manifest_bytes),
        "annotations": {"io.containerd.image.name": tag, "org.opencontainers.image.ref.name": tag},
    }],
}
# docker-archive's manifest, pointing into the same blobs.
docker_manifest = [{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [tag], "Layers": [f"blobs/sha256/{layer_digest}"]}]

with tarfile.open(output, mode="w", format=tarfile.PAX_FORMAT) as out:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = epoch
        info.mode = 0o644
        out.addfile(info, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", json.dumps(index, sort_keys=True).encode())
    add("manifest.json", json.dumps(docker_manifest).encode())
    add(f"blobs/sha256/{config_digest}", config_bytes)
    add(f"blobs/sha256/{manifest_digest}", manifest_bytes)
    add(f"blobs/sha256/{layer_digest}", layer)
print(json.dumps({"archive": output, "tag": tag, "config": f"sha256:{config_digest}", "layer": f"sha256:{layer_digest}"}))
PY
