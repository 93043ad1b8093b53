#!/usr/bin/env bash
# System tools the end-to-end tests drive (Debian packages). Needs root or sudo; does nothing
# when every tool is already there.
set -euo pipefail
missing=()
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi
