#!/usr/bin/env bash
# System tools the end-to-end tests drive (Debian packages). Needs root or sudo; does nothing
# when every tool is already there.
set -euo pipefail
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v nghttp >/dev/null || missing+=(nghttp2-client)  # nghttp and h2load
command -v openssl >/dev/null || missing+=(openssl)
command -v wrk >/dev/null || missing+=(wrk)  # the benchmark suite's smoke test
command -v gtlsclient >/dev/null || missing+=(ngtcp2-client)  # an independent HTTP/3 client
command -v chromium >/dev/null || missing+=(chromium)  # headless browser over HTTP/3
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi
