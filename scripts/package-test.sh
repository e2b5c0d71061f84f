#!/usr/bin/env bash
# Tests the Debian package the way an admin meets it (root, Debian 12; part of
# scripts/test.sh): build it (scripts/package.sh), lint it, install it with
# dpkg, run the installed binary on the shipped config, follow the README's
# Install and Postfix sections to a running daemon under the rcptsync user,
# verify the installed units, then remove and purge it and check what stays.
#
# It changes the machine (that is what it tests): the package is installed and
# purged again; the rcptsync system user stays, as after any purge.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "package-test: $*" >&2; }
expect_rc() { # want cmd...: run cmd, fail unless it exits with `want`
  local want=$1 rc=0
  shift
  "$@" >/tmp/package-test.out 2>&1 || rc=$?
  [ "$rc" = "$want" ] || { cat /tmp/package-test.out >&2; fail "'$*' exited $rc, want $want"; }
}

[ "$(id -u)" = 0 ] || fail "run as root (it installs the package)"
command -v postmap >/dev/null || fail "Postfix is needed (scripts/test-deps.sh installs it)"

step "building the packages"
scripts/package.sh >/dev/null
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
deb="$(ls target/debian/rcptsync_"$version"-1_*.deb)"
rpm_file="$(ls target/generate-rpm/rcptsync-"$version"-1.*.rpm)"

daemon_pid=
made_main_cf=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  dpkg -P rcptsync >/dev/null 2>&1 || true
  [ -z "$made_main_cf" ] || rm -f /etc/postfix/main.cf
}
trap cleanup EXIT

need=()
for p in lintian rpm; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  step "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

step "lintian $deb"
lint="$(lintian "$deb" 2>/dev/null || true)"
echo "$lint" >&2
if grep -q '^E:' <<<"$lint"; then fail "lintian reports errors"; fi

step "the RPM holds the same files"
rpm_list="$(rpm -qpl "$rpm_file" 2>/dev/null)"
for f in /usr/bin/rcptsync /usr/lib/systemd/system/rcptsync.service \
  /usr/lib/systemd/system/rcptsync-socketmap.socket /usr/lib/sysusers.d/rcptsync.conf \
  /usr/lib/tmpfiles.d/rcptsync.conf /etc/rcptsync/rcptsync.toml /usr/share/man/man1/rcptsync.1.gz; do
  grep -qx "$f" <<<"$rpm_list" || fail "$rpm_file lacks $f"
done
rpm -qp --configfiles "$rpm_file" 2>/dev/null | grep -qx /etc/rcptsync/rcptsync.toml \
  || fail "the RPM does not mark rcptsync.toml as a config file"

dpkg -P rcptsync >/dev/null 2>&1 || true
step "dpkg -i (twice: a reinstall must work too)"
dpkg -i "$deb" >/dev/null
dpkg -i "$deb" >/dev/null

step "installed files, user and state directory"
for f in /usr/bin/rcptsync /etc/rcptsync/rcptsync.toml /etc/rcptsync/recipients.txt \
  /lib/systemd/system/rcptsync.service /lib/systemd/system/rcptsync-sync.service \
  /lib/systemd/system/rcptsync-sync.timer /lib/systemd/system/rcptsync-socketmap.socket \
  /lib/systemd/system/rcptsync-socketmap.service /lib/systemd/system/rcptsync-stale.path \
  /lib/systemd/system/rcptsync-stale.service /lib/systemd/system/rcptsync-opensmtpd.path \
  /lib/systemd/system/rcptsync-opensmtpd.service /usr/share/man/man1/rcptsync.1.gz \
  /usr/share/bash-completion/completions/rcptsync /usr/share/zsh/vendor-completions/_rcptsync \
  /usr/share/fish/vendor_completions.d/rcptsync.fish /usr/share/doc/rcptsync/README.md \
  /usr/share/doc/rcptsync/changelog.gz /usr/share/doc/rcptsync/copyright \
  /usr/share/rcptsync/monitoring/rcptsync-alerts.yml; do
  [ -f "$f" ] || fail "the package did not install $f"
done
grep -qx /etc/rcptsync/rcptsync.toml /var/lib/dpkg/info/rcptsync.conffiles \
  || fail "rcptsync.toml is not a conffile"
getent passwd rcptsync >/dev/null || fail "no rcptsync user"
getent group rcptsync >/dev/null || fail "no rcptsync group"
[ "$(stat -c '%a %U %G' /var/lib/rcptsync)" = "700 rcptsync rcptsync" ] \
  || fail "/var/lib/rcptsync is $(stat -c '%a %U %G' /var/lib/rcptsync), want 700 rcptsync rcptsync"
for u in rcptsync.service rcptsync-sync.timer rcptsync-socketmap.socket rcptsync-stale.path rcptsync-opensmtpd.path; do
  for d in /etc/systemd/system/*.wants; do
    [ ! -e "$d/$u" ] || fail "the package enabled $u ($d); units must only be installed"
  done
done
zcat /usr/share/man/man1/rcptsync.1.gz | grep -q '^\.TH' || fail "the man page is not a man page"
bash -c 'source /usr/share/bash-completion/completions/rcptsync && complete -p rcptsync' >/dev/null \
  || fail "the bash completion does not register for rcptsync"

step "systemd-analyze verify on the installed units"
# rcptsync-opensmtpd.service runs smtpctl, which is not installed beside
# Postfix: it is verified with the extracted one (scripts/test-deps.sh).
verify_dir="$(mktemp -d)"
sed "s#/usr/sbin/smtpctl#${RCPTSYNC_TEST_OPENSMTPD_ROOT:-}/usr/sbin/smtpctl#" \
  /lib/systemd/system/rcptsync-opensmtpd.service >"$verify_dir/rcptsync-opensmtpd.service"
cp /lib/systemd/system/rcptsync-opensmtpd.path "$verify_dir/"
(cd / && systemd-analyze verify $(ls /lib/systemd/system/rcptsync*.{service,socket,timer,path} \
  | grep -v rcptsync-opensmtpd)) 2>&1 | tee /tmp/package-test.verify >&2
# (The path unit's Unit= is looked up by name: the copy must come first.)
(cd / && SYSTEMD_UNIT_PATH="$verify_dir:" systemd-analyze verify "$verify_dir"/*) 2>&1 \
  | tee -a /tmp/package-test.verify >&2
rm -rf "$verify_dir"
# A clean verify prints nothing about our units (unrelated host units may warn).
if grep -q 'rcptsync' /tmp/package-test.verify; then fail "systemd-analyze verify complains"; fi
for u in rcptsync.service rcptsync-sync.service rcptsync-socketmap.service; do
  score="$(systemd-analyze security --offline=yes "/lib/systemd/system/$u" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')"
  [ -n "$score" ] || fail "systemd-analyze security gave no score for $u"
  step "  $u: exposure $score"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || fail "$u exposure $score > 2.5"
done

step "the shipped config, with the installed binary"
expect_rc 0 /usr/bin/rcptsync check --offline -c /etc/rcptsync/rcptsync.toml
# As shipped the list is empty: the guard refuses to publish nothing (exit 3).
expect_rc 3 runuser -u rcptsync -- /usr/bin/rcptsync sync -c /etc/rcptsync/rcptsync.toml
[ ! -e /var/lib/rcptsync/out/recipients ] || fail "an empty list was published"
# root must not take over the rcptsync user's state (it would lock the daemon out).
expect_rc 78 /usr/bin/rcptsync sync -c /etc/rcptsync/rcptsync.toml
grep -q 'rcptsync' /tmp/package-test.out || fail "root's refusal does not say whose state it is"
echo 'alice@example.com' >>/etc/rcptsync/recipients.txt
expect_rc 0 runuser -u rcptsync -- /usr/bin/rcptsync sync -c /etc/rcptsync/rcptsync.toml
grep -qx 'alice@example.com' /var/lib/rcptsync/out/recipients || fail "the first sync did not write the list"
[ "$(stat -c %U /var/lib/rcptsync/out/recipients)" = rcptsync ] || fail "the list is not the rcptsync user's"

step "README, Postfix section: init, output directory, first sync, a running daemon"
/usr/bin/rcptsync init --source file --mta postfix >/etc/rcptsync/rcptsync.toml
sed -i 's/^# \[daemon\]/[daemon]/; s/^# schedule = .*/schedule = "*\/5 * * * *"/' /etc/rcptsync/rcptsync.toml
expect_rc 0 /usr/bin/rcptsync check --offline -c /etc/rcptsync/rcptsync.toml
install -d -o rcptsync -g rcptsync /etc/postfix/rcptsync
# The test machine's Postfix is installed but unconfigured (the MTA tests run
# private instances); postmap needs a main.cf, as on any configured host.
if [ ! -e /etc/postfix/main.cf ]; then
  made_main_cf=1
  printf 'compatibility_level = 3.6\n' >/etc/postfix/main.cf
fi
rm -f /etc/postfix/rcptsync/relay_recipients* /etc/postfix/rcptsync/relay_domains*
echo '@catchall.example' >>/etc/rcptsync/recipients.txt
# setpriv execs the daemon itself (runuser would stand between it and SIGTERM).
setpriv --reuid=rcptsync --regid=rcptsync --init-groups \
  /usr/bin/rcptsync daemon -c /etc/rcptsync/rcptsync.toml >/tmp/package-test.daemon 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
  [ -e /etc/postfix/rcptsync/relay_recipients.lmdb ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat /tmp/package-test.daemon >&2; fail "the daemon exited"; }
  sleep 0.1
done
[ "$(postmap -q alice@example.com lmdb:/etc/postfix/rcptsync/relay_recipients)" = OK ] \
  || { cat /tmp/package-test.daemon >&2; fail "the daemon's map lacks alice@example.com"; }
[ "$(postmap -q @catchall.example lmdb:/etc/postfix/rcptsync/relay_recipients)" = OK ] \
  || fail "the daemon's map lacks the catch-all"
postmap -q catchall.example lmdb:/etc/postfix/rcptsync/relay_domains >/dev/null \
  || fail "relay_domains lacks catchall.example"
if postmap -q bob@example.com lmdb:/etc/postfix/rcptsync/relay_recipients >/dev/null; then
  fail "the map accepts an unknown address"
fi
kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=
[ "$rc" = 0 ] || { cat /tmp/package-test.daemon >&2; fail "the daemon exited $rc on SIGTERM"; }

step "dpkg -r keeps config and state"
dpkg -r rcptsync >/dev/null
[ ! -e /usr/bin/rcptsync ] || fail "dpkg -r left the binary"
[ ! -e /lib/systemd/system/rcptsync.service ] || fail "dpkg -r left the units"
grep -q 'alice@example.com' /etc/rcptsync/recipients.txt || fail "dpkg -r lost recipients.txt"
grep -q 'template = "postfix"' /etc/rcptsync/rcptsync.toml || fail "dpkg -r lost the edited config"
[ -d /var/lib/rcptsync/out ] || fail "dpkg -r removed the state"

step "dpkg -P removes config and state; the user and the MTA's maps stay"
dpkg -P rcptsync >/dev/null
[ ! -e /etc/rcptsync ] || fail "dpkg -P left /etc/rcptsync: $(ls -A /etc/rcptsync)"
[ ! -e /var/lib/rcptsync ] || fail "dpkg -P left /var/lib/rcptsync"
getent passwd rcptsync >/dev/null || fail "dpkg -P removed the rcptsync user"
[ -e /etc/postfix/rcptsync/relay_recipients.lmdb ] || fail "dpkg -P removed the map Postfix reads"
rm -rf /etc/postfix/rcptsync

step "ok"
