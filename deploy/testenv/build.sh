#!/usr/bin/env bash
# Builds the Kubernetes control plane that tensor-fusion's tests run against (kube-apiserver,
# kube-scheduler, kube-controller-manager, kubectl from k8s.io/kubernetes at the release pinned in
# go.mod, etcd from go.etcd.io/etcd/server/v3) into a cache keyed by this module's files, and
# prints the directory that holds the binaries. Builds nothing when the cache is complete.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TF_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tensor-fusion/testenv}"
hash="$(cd "$here" && cat go.mod go.sum */main.go | sha256sum | cut -c1-16)"
bin="$cache_root/$hash/bin"
bins=(etcd kube-apiserver kube-scheduler kubectl kube-controller-manager)
complete=1
for b in "${bins[@]}"; do [[ -x "$bin/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then echo "$bin"; exit 0; fi
mkdir -p "$bin.partial"
cd "$here"
for b in "${bins[@]}"; do
  if [[ ! -x "$bin.partial/$b" ]]; then
    echo "building $b (this takes minutes the first time)" >&2
    go build -trimpath -ldflags=-s -o "$bin.partial/$b.tmp" "./$b"
    mv "$bin.partial/$b.tmp" "$bin.partial/$b"
  fi
done
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
