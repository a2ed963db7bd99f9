#!/usr/bin/env bash
# Makes the two base images the Dockerfile names, locally, for machines that
# reach Debian's package mirror but no container registry:
#
#   debian:bookworm-slim      Debian 12, debootstrap --variant=minbase, without
#                             docs, man pages, locales and apt lists (as the
#                             official slim image)
#   rust:1.95-slim-bookworm   that image plus this machine's Rust toolchain
#                             (rustc, cargo, the x86_64 standard library and
#                             linker only), gcc, libc6-dev, pkg-config, make,
#                             python3, python3-pip and ca-certificates, with the
#                             official image's RUSTUP_HOME, CARGO_HOME and PATH
#
# An image whose tag already exists is left as it is, so on a machine that can
# pull the official images (or after one run of this script) it does nothing.
# Needs root (debootstrap), debootstrap, a running Docker engine and a Rust
# 1.95 toolchain on PATH.
#
# Settings (environment):
#   DEBIAN_MIRROR           Debian mirror (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  security mirror written into the image's sources
#                           (default http://deb.debian.org/debian-security)
#   BASE_CACHE              folder for the debootstrapped root file system's
#                           tarball (default target/docker-base, ignored by
#                           git); delete it to debootstrap again
#   RUST_SYSROOT            toolchain to copy (default: rustc --print sysroot)
#   HOST_CA_BUNDLE          this machine's trusted CAs (default
#                           /etc/ssl/certs/ca-certificates.crt): those Debian's
#                           ca-certificates lacks (a TLS-inspecting proxy's CA,
#                           a private mirror's) are added to the rust image, so
#                           pip and cargo in the build stage reach PyPI and
#                           crates.io as this machine does; the runtime image
#                           never gets them
set -euo pipefail
cd "$(dirname "$0")/../.."

DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BASE_CACHE="${BASE_CACHE:-target/docker-base}"
SUITE=bookworm
DEBIAN_IMAGE=debian:bookworm-slim
RUST_MINOR=1.95
RUST_IMAGE=rust:${RUST_MINOR}-slim-bookworm
TRIPLE=x86_64-unknown-linux-gnu

export DOCKER_BUILDKIT=0

log() { printf 'base-images: %s\n' "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- debian:bookworm-slim ----------------------------------------------------
make_debian() {
  local tarball="$BASE_CACHE/debian-$SUITE-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || {
      log "installing debootstrap"
      apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    }
    local root="$BASE_CACHE/rootfs"
    rm -rf "$root" && mkdir -p "$root"
    log "debootstrap $SUITE (minbase) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --components=main "$SUITE" "$root" "$DEBIAN_MIRROR" \
      >"$BASE_CACHE/debootstrap.log" 2>&1 || {
      tail -n 30 "$BASE_CACHE/debootstrap.log"; exit 1; }

    # What the official slim image does: keep docs, man pages and
    # translations out of later installs, clean apt's caches after each.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
      "$root"/var/log/apt/* "$root"/tmp/* "$root"/etc/hostname "$root"/etc/machine-id
    : >"$root/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  else
    log "reusing $tarball"
  fi
  log "docker import $DEBIAN_IMAGE"
  docker import --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE" "$tarball" "$DEBIAN_IMAGE" >/dev/null
}

# --- rust:1.95-slim-bookworm -------------------------------------------------
make_rust() {
  local sysroot="${RUST_SYSROOT:-$(rustc --print sysroot)}"
  local version
  version="$("$sysroot/bin/rustc" --version | awk '{print $2}')"
  case "$version" in
    "$RUST_MINOR".*) ;;
    *) log "the toolchain at $sysroot is rustc $version, not $RUST_MINOR.x"; exit 1 ;;
  esac
  # The files cargo and rustc need, relative to the sysroot: no docs, no
  # clippy/rustfmt, no other targets or toolchains.
  local files=(bin/cargo bin/rustc lib/rustlib/"$TRIPLE"/lib lib/rustlib/"$TRIPLE"/bin)
  local f
  for f in "$sysroot"/lib/librustc_driver-*.so "$sysroot"/lib/libLLVM*; do
    files+=("lib/${f##*/}")
  done
  local toolchain="/usr/local/rustup/toolchains/$version-$TRIPLE"
  local ctr
  ctr="$(docker create --network host -e DEBIAN_FRONTEND=noninteractive "$DEBIAN_IMAGE" bash -euc "
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev pkg-config make python3 python3-pip ca-certificates >/tmp/apt.log 2>&1 ||
      { cat /tmp/apt.log; exit 1; }
    rm -f /tmp/apt.log
    rm -rf /var/lib/apt/lists/*
    if [ -s /tmp/host-ca.crt ]; then
      python3 - <<'PY'
import re
pem = re.compile(r'-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----', re.S)
known = set(pem.findall(open('/etc/ssl/certs/ca-certificates.crt').read()))
extra = [c for c in pem.findall(open('/tmp/host-ca.crt').read()) if c not in known]
for i, cert in enumerate(extra):
    open(f'/usr/local/share/ca-certificates/build-host-{i}.crt', 'w').write(cert + '\\n')
print(f'{len(extra)} CA certificate(s) that this machine trusts added')
PY
      update-ca-certificates >/tmp/ca.log 2>&1 || { cat /tmp/ca.log; exit 1; }
      rm -f /tmp/ca.log
      rm -f /tmp/host-ca.crt
    fi
    mkdir -p /usr/local/cargo/bin
    ln -s $toolchain/bin/cargo /usr/local/cargo/bin/cargo
    ln -s $toolchain/bin/rustc /usr/local/cargo/bin/rustc
    /usr/local/cargo/bin/rustc --version
    /usr/local/cargo/bin/cargo --version")"
  trap 'docker rm -f "$ctr" >/dev/null 2>&1 || true' EXIT
  log "copying rustc $version from $sysroot"
  docker cp - "$ctr:/" < <(tar -C "$sysroot" -c --transform "s,^,${toolchain#/}/,S" "${files[@]}")
  if [ -s "$HOST_CA_BUNDLE" ]; then
    docker cp -L "$HOST_CA_BUNDLE" "$ctr:/tmp/host-ca.crt"
  fi
  log "installing gcc, libc6-dev, pkg-config, make, python3, python3-pip, ca-certificates"
  docker start -a "$ctr"
  docker commit \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$version" \
    --change 'CMD ["bash"]' \
    "$ctr" "$RUST_IMAGE" >/dev/null
  docker rm "$ctr" >/dev/null
  trap - EXIT
}

mkdir -p "$BASE_CACHE"
if have_image "$DEBIAN_IMAGE"; then log "$DEBIAN_IMAGE exists"; else make_debian; fi
if have_image "$RUST_IMAGE"; then log "$RUST_IMAGE exists"; else make_rust; fi
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^($DEBIAN_IMAGE|$RUST_IMAGE) "
