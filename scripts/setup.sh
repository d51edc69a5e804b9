# Sourced by scripts/quickstart and scripts/test: makes a Debian/Ubuntu machine ready.
#   - system packages (python3 with venv, fuse3 for the mount; attr and rsync, which its tests drive; with the
#     test extra, postgresql, whose server the tests run privately, and systemd for systemd-analyze), installed
#     only when missing;
#   - a virtualenv in .venv with s3filesfs installed from this checkout (plus $S3FILESFS_EXTRAS).
# Re-running is cheap: nothing is fetched when everything is already there.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SYSTEM_PACKAGES=(python3 python3-venv python3-pip fuse3 attr rsync)
# The tests start a PostgreSQL server of their own (initdb, pg_ctl); s3filesfs itself only needs its
# Python driver, so the quick start installs no database server.
case ",${S3FILESFS_EXTRAS:-}," in *,test,*) SYSTEM_PACKAGES+=(postgresql) ;; esac
# The tests check the units `s3filesfs service install` writes with systemd-analyze, from the package
# systemd (already on nearly every Debian/Ubuntu machine; installing it in a container starts nothing).
if [[ "${S3FILESFS_EXTRAS:-}" == *test* ]]; then SYSTEM_PACKAGES+=(systemd); fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi
}

missing=()
if command -v dpkg-query >/dev/null; then
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
# A python3 that can already make a venv (pyenv, a newer distro) does not need Debian's.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  remaining=()
  for pkg in "${missing[@]}"; do case "$pkg" in python3|python3-venv|python3-pip) ;; *) remaining+=("$pkg");; esac; done
  missing=("${remaining[@]}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
echo "setup: installing s3filesfs${S3FILESFS_EXTRAS:+[$S3FILESFS_EXTRAS]} into .venv"
# pip's output is kept for when it fails; setuptools' build chatter is noise otherwise.
pip_log=$(mktemp)
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${S3FILESFS_EXTRAS:+[$S3FILESFS_EXTRAS]}" >"$pip_log" 2>&1; then
  cat "$pip_log" >&2
  rm -f "$pip_log"
  echo "setup: pip install failed" >&2
  exit 1
fi
rm -f "$pip_log"
