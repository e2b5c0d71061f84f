#!/usr/bin/env bash
# Builds rcptsync's packages (run as root on Debian 12, no arguments):
#   target/debian/rcptsync_<version>-1_<arch>.deb     (cargo-deb)
#   target/generate-rpm/rcptsync-<version>-1.<arch>.rpm (cargo-generate-rpm)
#
# Installs what it needs: dpkg-dev (dependency detection) and libkrb5-dev /
# libclang-dev (the packages are built with the `kerberos` feature) from apt,
# and pinned cargo-deb and cargo-generate-rpm under target/package-tools.
# The generated files (man page, completions, the starting config from
# `rcptsync init`, the Debian changelog) go to target/package/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
TOOLS="$PWD/target/package-tools"
GEN="$PWD/target/package"

log() { echo "package: $*" >&2; }

if [ "$#" -ne 0 ]; then
  echo "usage: scripts/package.sh (no arguments)" >&2
  exit 64
fi

need_apt=()
for p in dpkg-dev libkrb5-dev libclang-dev; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || need_apt+=("$p")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

tool() { # name version
  if [ "$("$TOOLS/bin/$1" --version 2>/dev/null | awk '{print $NF}')" != "$2" ]; then
    log "cargo install $1 $2"
    cargo install --quiet --locked --version "$2" --root "$TOOLS" "$1"
  fi
}
tool cargo-deb "$CARGO_DEB_VERSION"
tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
export PATH="$TOOLS/bin:$PATH"

# Stripped: the package ships no debug symbols (lintian: unstripped-binary).
log "cargo build --release --locked --features kerberos (stripped)"
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --features kerberos --quiet
bin=target/release/rcptsync

version="$(cargo metadata --no-deps --format-version 1 | python3 -c \
  'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="rcptsync"))')"

rm -rf "$GEN"
mkdir -p "$GEN"
# The starting config: a file source and a plain list under /var/lib/rcptsync/out/,
# so nothing touches the MTA until the admin says so. It must pass check --offline.
"$bin" init --source file --mta none >"$GEN/rcptsync.toml"
"$bin" check --offline -c "$GEN/rcptsync.toml" >/dev/null
"$bin" man | gzip -9n >"$GEN/rcptsync.1.gz"
"$bin" completions bash >"$GEN/rcptsync.bash"
"$bin" completions zsh >"$GEN/_rcptsync"
"$bin" completions fish >"$GEN/rcptsync.fish"
gzip -9nc CHANGELOG.md >"$GEN/changelog.gz"
# Debian's own changelog for the package revision (dated by the last commit,
# so that a rebuild of the same tree gives the same file).
when="$(git log -1 --format=%aD 2>/dev/null || date -R)"
cat >"$GEN/changelog.Debian" <<CHANGES
rcptsync ($version-1) unstable; urgency=medium

  * Package of rcptsync $version; see /usr/share/doc/rcptsync/changelog.gz.

 -- rcptsync maintainers <maintainers@users.noreply.r-seed-4e781c00.example>  $when
CHANGES

log "cargo deb"
cargo deb --no-build --quiet
log "cargo generate-rpm"
cargo generate-rpm
ls -1 target/debian/rcptsync_"$version"-1_*.deb target/generate-rpm/rcptsync-"$version"-1.*.rpm
