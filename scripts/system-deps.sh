#!/usr/bin/env bash
# Installs the Debian packages Stockade's tests and `stockade up` need, or says how to.
# Run by `make`; as root it installs what is missing, otherwise it stops with the apt-get line.
set -euo pipefail

# binary -> Debian package
declare -A need=(
  [sshd]=openssh-server
  [ssh]=openssh-client
  [ssh-agent]=openssh-client
  [git]=git
  [nft]=nftables
  [ip]=iproute2
  [bwrap]=bubblewrap
  [osslsigncode]=osslsigncode
  [skopeo]=skopeo
  [wixl]=wixl
  [x86_64-w64-mingw32-gcc]=gcc-mingw-w64-x86-64-win32
  [fail2ban-regex]=fail2ban
  [psql]=postgresql-client
  [podman]=podman
  [runc]=runc
  [busybox]=busybox-static
  [catatonit]=catatonit
  [gcc]=gcc
  [mkfs.ext4]=e2fsprogs
  [chromium]=chromium
)

missing=()
for bin in "${!need[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing+=("${need[$bin]}")
  fi
done
# de-duplicate, stable order
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "system-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "system-deps: missing system packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# osslsigncode signs PowerShell scripts only from 2.8 on.
ver=$(osslsigncode --version 2>/dev/null | head -n1 | grep -oE "[0-9]+\.[0-9]+" | head -n1)
major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
if [ -z "$ver" ] || [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 8 ]; }; then
  echo "system-deps: osslsigncode ${ver:-?} is older than 2.8 and cannot sign .ps1/.psm1/.psd1;" >&2
  echo "  install osslsigncode >= 2.8 (Debian trixie or bookworm-backports) and run make again" >&2
  exit 1
fi
