#!/usr/bin/env bash
# Installs / prepares the real MTAs used by rcptsync's integration tests.
#
#   eval "$(scripts/test-deps.sh)"     # as root, Debian 12
#
# - apt-installs postfix (+lmdb, +cdb maps), libnss-wrapper, swaks, tinycdb
#   (apt-get update only when something is missing; postfix gets
#   "No configuration", so no system instance is configured or started);
# - downloads Exim's .debs and extracts them under target/test-deps/exim-root
#   WITHOUT installing them (exim4 conflicts with postfix);
# - extracts OpenSMTPD and Sendmail the same way (target/test-deps/opensmtpd-root,
#   sendmail-root): they conflict with postfix too; and nginx (nginx-root), whose
#   package would start a server on port 80;
# - writes nss_wrapper passwd/group files that add the compiled-in
#   "Debian-exim" user and OpenSMTPD's "opensmtpd"/"opensmtpq";
# - prints `export` lines on stdout. Everything else goes to stderr.
# Idempotent: a second run does no network access and takes well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/test-deps"
DEBS="$OUT/debs"
EXIM_ROOT="$OUT/exim-root"
NSS="$OUT/nss"

APT_PKGS=(postfix postfix-lmdb postfix-cdb libnss-wrapper swaks tinycdb postgresql mariadb-server slapd ldap-utils
  samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools attr
  systemd libkrb5-dev libclang-dev m4 liblockfile1 libevent-2.1-7 libwrap0 libnsl2 libdb5.3 minisign)
EXIM_PKGS=(exim4-daemon-light exim4-base exim4-config libidn12)
# OpenSMTPD and Sendmail conflict with Postfix as packages: extracted like Exim.
OPENSMTPD_PKGS=(opensmtpd)
SENDMAIL_PKGS=(sendmail-bin sendmail-cf sendmail-base)
# nginx serves a hub's bundles to edges in the fleet tests. Extracted: the
# package would start a server on port 80.
NGINX_PKGS=(nginx)

log() { echo "test-deps: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

mkdir -p "$OUT"
APT_LOG="$OUT/apt.log"
# run a command with its output in $APT_LOG; show the log on failure
quiet() {
  if ! "$@" >>"$APT_LOG" 2>&1; then
    log "FAILED: $* (output follows)"
    tail -n 50 "$APT_LOG" >&2
    return 1
  fi
}

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    quiet apt-get update -q
    apt_updated=1
  fi
}

# --- 1. system packages -----------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
  is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt_update
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
  # (the postfix-lmdb/-cdb postinst print "postconf: fatal: open /etc/postfix/main.cf";
  #  harmless: they still register themselves in /etc/postfix/dynamicmaps.cf)
  quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${APT_PKGS[@]}"
else
  log "apt packages already installed"
fi

# --- 2. Exim, OpenSMTPD, Sendmail and nginx: extracted, not installed -------
# (each conflicts with postfix, or would start a server, as a package)
mkdir -p "$DEBS" "$EXIM_ROOT" "$NSS"
extract() { # dir pkgs...
  local root="$1"
  shift
  [ -f "$root/.extracted" ] && return 0
  local want=()
  for p in "$@"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || want+=("$p")
  done
  if [ "${#want[@]}" -gt 0 ]; then
    log "downloading: ${want[*]}"
    if ! (cd "$DEBS" && apt-get download -q "${want[@]}") >>"$APT_LOG" 2>&1; then
      apt_update
      (cd "$DEBS" && quiet apt-get download -q "${want[@]}")
    fi
  fi
  log "extracting $* into $root"
  rm -rf "$root"
  mkdir -p "$root"
  for p in "$@"; do
    for deb in "$DEBS/${p}"_*.deb; do
      dpkg -x "$deb" "$root"
    done
  done
  touch "$root/.extracted"
}
extract "$EXIM_ROOT" "${EXIM_PKGS[@]}"
# setuid would make the re-exec'd exim run in secure mode (ignores LD_LIBRARY_PATH).
chmod u-s,g-s "$EXIM_ROOT/usr/sbin/exim4"

EXIM_BIN="$EXIM_ROOT/usr/sbin/exim4"
[ -x "$EXIM_BIN" ] || die "no exim binary at $EXIM_BIN"
libidn="$(find "$EXIM_ROOT" -name 'libidn.so.12' | head -n1)"
[ -n "$libidn" ] || die "libidn.so.12 not found under $EXIM_ROOT"
EXIM_LIBS="$(dirname "$libidn")"

OPENSMTPD_ROOT="$OUT/opensmtpd-root"
SENDMAIL_ROOT="$OUT/sendmail-root"
extract "$OPENSMTPD_ROOT" "${OPENSMTPD_PKGS[@]}"
extract "$SENDMAIL_ROOT" "${SENDMAIL_PKGS[@]}"
NGINX_ROOT="$OUT/nginx-root"
extract "$NGINX_ROOT" "${NGINX_PKGS[@]}"
"$NGINX_ROOT/usr/sbin/nginx" -v 2>/dev/null || die "extracted nginx does not run"
{ "$OPENSMTPD_ROOT/usr/sbin/smtpd" -h 2>&1 || true; } | grep -q "OpenSMTPD" || die "extracted smtpd does not run"
[ -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] || die "no sendmail binary under $SENDMAIL_ROOT"

# --- 2b. promtool (from Debian's prometheus package), extracted, not installed:
# the package would start a Prometheus server; the tests need only promtool.
PROM_ROOT="$OUT/prometheus-root"
if [ ! -x "$PROM_ROOT/usr/bin/promtool" ]; then
  if ! compgen -G "$DEBS/prometheus_*.deb" >/dev/null; then
    log "downloading: prometheus (for promtool)"
    if ! (cd "$DEBS" && apt-get download -q prometheus) >>"$APT_LOG" 2>&1; then
      apt_update
      (cd "$DEBS" && quiet apt-get download -q prometheus)
    fi
  fi
  rm -rf "$PROM_ROOT"
  mkdir -p "$PROM_ROOT"
  for deb in "$DEBS"/prometheus_*.deb; do
    dpkg -x "$deb" "$PROM_ROOT"
  done
fi
PROMTOOL="$PROM_ROOT/usr/bin/promtool"
"$PROMTOOL" --version >/dev/null 2>&1 || die "extracted promtool does not run ($PROMTOOL)"

NSS_WRAPPER_LIB="$(dpkg -L libnss-wrapper | grep -E '/libnss_wrapper\.so$' | head -n1 || true)"
[ -n "$NSS_WRAPPER_LIB" ] && [ -e "$NSS_WRAPPER_LIB" ] || die "libnss_wrapper.so not found"

# --- 3. nss_wrapper files with the compiled-in Debian-exim user -----------
free_id() { # first id >= 900 free in both passwd and group
  local id=900
  while getent passwd "$id" >/dev/null || getent group "$id" >/dev/null; do
    id=$((id + 1))
  done
  echo "$id"
}
tmp_passwd="$NSS/passwd.tmp.$$"
tmp_group="$NSS/group.tmp.$$"
getent passwd >"$tmp_passwd"
getent group >"$tmp_group"
if ! getent passwd Debian-exim >/dev/null || ! getent group Debian-exim >/dev/null; then
  if getent group Debian-exim >/dev/null; then
    gid="$(getent group Debian-exim | cut -d: -f3)"
  else
    gid="$(free_id)"
    echo "Debian-exim:x:$gid:" >>"$tmp_group"
  fi
  if ! getent passwd Debian-exim >/dev/null; then
    uid="$gid"
    if getent passwd "$uid" >/dev/null; then uid="$(free_id)"; fi
    echo "Debian-exim:x:$uid:$gid::/var/spool/exim4:/usr/sbin/nologin" >>"$tmp_passwd"
  fi
fi
# OpenSMTPD's privilege-separation users (the ids Debian's postinst would pick
# do not matter: smtpd looks them up by name).
for u in opensmtpd opensmtpq; do
  if ! grep -q "^$u:" "$tmp_group"; then
    id="$(free_id)"
    while grep -q ":$id:" "$tmp_group" "$tmp_passwd"; do id=$((id + 1)); done
    echo "$u:x:$id:" >>"$tmp_group"
    echo "$u:x:$id:$id::/var/lib/opensmtpd/empty:/usr/sbin/nologin" >>"$tmp_passwd"
  fi
done
mv -f "$tmp_passwd" "$NSS/passwd"
mv -f "$tmp_group" "$NSS/group"

# --- 4. result ---------------------------------------------------------------
exim_version="$(LD_LIBRARY_PATH="$EXIM_LIBS" LD_PRELOAD="$NSS_WRAPPER_LIB" \
  NSS_WRAPPER_PASSWD="$NSS/passwd" NSS_WRAPPER_GROUP="$NSS/group" \
  "$EXIM_BIN" -bV -C /dev/null 2>/dev/null | sed -n 's/^Exim version \([^ ]*\).*/\1/p' || true)"
[ -n "$exim_version" ] || die "extracted exim does not run (try: LD_LIBRARY_PATH=$EXIM_LIBS $EXIM_BIN -bV)"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
command -v mariadbd >/dev/null || die "mariadbd not found (mariadb-server)"
log "ready: postfix $(postconf -dh mail_version), exim $exim_version, $("$PG_BIN/postgres" --version), $(mariadbd --version | cut -d' ' -f1-4)"
emit() { printf 'export %s=%q\n' "$1" "$2"; }
emit RCPTSYNC_TEST_REAL_MTA 1
emit RCPTSYNC_TEST_EXIM "$EXIM_BIN"
emit RCPTSYNC_TEST_EXIM_LIBS "$EXIM_LIBS"
emit RCPTSYNC_TEST_NSS_WRAPPER "$NSS_WRAPPER_LIB"
emit RCPTSYNC_TEST_NSS_PASSWD "$NSS/passwd"
emit RCPTSYNC_TEST_NSS_GROUP "$NSS/group"
emit RCPTSYNC_TEST_REAL_DB 1
emit RCPTSYNC_TEST_PG_BIN "$PG_BIN"
emit RCPTSYNC_TEST_PROMTOOL "$PROMTOOL"
emit RCPTSYNC_TEST_OPENSMTPD_ROOT "$OPENSMTPD_ROOT"
emit RCPTSYNC_TEST_SENDMAIL_ROOT "$SENDMAIL_ROOT"
emit RCPTSYNC_TEST_NGINX "$NGINX_ROOT/usr/sbin/nginx"
