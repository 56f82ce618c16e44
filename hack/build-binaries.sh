#!/usr/bin/env bash
# Build the local cluster's binaries from their Go modules, each into
# $KUBETUNE_CACHE/<component>-<version>/bin, only when missing.
#
# Usage: hack/build-binaries.sh [component ...]   (default: all)
# Components: kubernetes etcd kwok helm minio kueue (the default set), and training-operator
# (the Kubeflow training operator, only for `hack/bench_operator.py --peer kubeflow`)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
mkdir -p "$cache"

log() { printf '[build-binaries] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH; install Go >= 1.26 (Kubernetes ${KUBERNETES_VERSION} needs it)"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -trimpath"

# The checksum database protects module downloads; Go reaches it through the
# module proxy. When neither the proxy nor sum.golang.org serves it, say so and
# turn it off explicitly rather than letting every download hang or fail.
check_sumdb() {
  local proxy sumdb
  sumdb="$(go env GOSUMDB)"
  [[ "$sumdb" == "off" ]] && { log "GOSUMDB=off is set by the environment: module checksums are not verified"; return; }
  proxy="$(go env GOPROXY | cut -d, -f1 | cut -d'|' -f1)"
  if [[ "$proxy" == http* ]] && curl -fsS -m 15 -o /dev/null "$proxy/sumdb/sum.golang.org/supported" 2>/dev/null; then
    return
  fi
  if curl -fsS -m 15 -o /dev/null "https://sum.golang.org/lookup/github.com/google/uuid@v1.6.0" 2>/dev/null; then
    return
  fi
  log "WARNING: the Go checksum database is unreachable (neither through $proxy nor directly);"
  log "WARNING: setting GOSUMDB=off and GOFLAGS=-mod=mod: module checksums will NOT be verified."
  export GOSUMDB=off
  export GOFLAGS="$GOFLAGS -mod=mod"
}

# new_wrapper DIR: a scratch module that depends on the component's modules.
new_wrapper() {
  rm -rf "$1" && mkdir -p "$1"
  (cd "$1" && go mod init kubetune.local/build >/dev/null 2>&1)
}

build_kubernetes() {
  local v="$KUBERNETES_VERSION" out="$cache/kubernetes-$KUBERNETES_VERSION"
  [[ -x "$out/bin/kube-apiserver" && -x "$out/bin/kubectl" && -x "$out/bin/kube-controller-manager" && -x "$out/bin/kube-scheduler" ]] && return
  log "building kubernetes $v (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl); cold this takes 20-40 minutes on 2 cores"
  local w="$cache/.wrap-kubernetes"
  new_wrapper "$w"
  cd "$w"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
  # with ./staging/...; those replaces are ignored for a dependency, so map each
  # one to its published release (v1.X.Y -> v0.X.Y).
  go mod download -json "k8s.io/kubernetes@$v" > kube.json
  local gomod staging="v0.${v#v1.}"
  gomod="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' kube.json)"
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r m; do
    go mod edit -replace "$m=$m@$staging"
  done
  go mod edit -require "k8s.io/kubernetes@$v"
  local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  # A blank-import file makes `go mod tidy` resolve everything these mains need.
  { echo "//go:build tools"; echo "package tools"; echo "import ("; for p in $pkgs; do echo "  _ \"$p\""; done; echo ")"; } > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  local minor="${v#v1.}"; minor="${minor%%.*}"
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitCommit=kubetune-module-build -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$out/bin.tmp"
  go build -ldflags "$ld" -o "$out/bin.tmp/" $pkgs
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  cd - >/dev/null
}

build_etcd() {
  local v="$ETCD_VERSION" out="$cache/etcd-$ETCD_VERSION"
  [[ -x "$out/bin/etcd" ]] && return
  log "building etcd $v"
  local w="$cache/.wrap-etcd"
  new_wrapper "$w"
  cd "$w"
  echo -e '//go:build tools\npackage tools\nimport _ "go.etcd.io/etcd/server/v3"' > tools.go
  go get "go.etcd.io/etcd/server/v3@$v" >/dev/null
  go mod tidy -e >/dev/null 2>&1 || true
  mkdir -p "$out/bin.tmp"
  go build -ldflags "-s -w" -o "$out/bin.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  cd - >/dev/null
}

# go_install_to OUT LDFLAGS PKG@VERSION...
go_install_to() {
  local out="$1" ld="$2"; shift 2
  rm -rf "$out/bin.tmp" && mkdir -p "$out/bin.tmp"
  GOBIN="$out/bin.tmp" go install -ldflags "$ld" "$@"
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

build_kwok() {
  local out="$cache/kwok-$KWOK_VERSION"
  [[ -x "$out/bin/kwok" ]] && return
  log "building kwok $KWOK_VERSION"
  go_install_to "$out" "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok >= 0.8 ships no built-in stages: keep the module's stage files beside the binary.
  local moddir; moddir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$out/stage" && cp -r "$moddir/kustomize/stage" "$out/stage" && chmod -R u+w "$out/stage"
}

build_helm() {
  local out="$cache/helm-$HELM_VERSION"
  [[ -x "$out/bin/helm" ]] && return
  log "building helm $HELM_VERSION"
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  go_install_to "$out" "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_minio() {
  local out="$cache/minio-$MINIO_VERSION" v="$MINIO_MODULE_VERSION"
  [[ -x "$out/bin/minio" ]] && return
  log "building minio $MINIO_VERSION ($v)"
  # See hack/versions.env: fetch .mod and .zip from the module proxy, verify the
  # zip against the pinned SHA-256, and put them in a file proxy with an .info.
  local proxy fp="$cache/.goproxy-minio" dir
  proxy="$(go env GOPROXY | cut -d, -f1 | cut -d'|' -f1)"
  [[ "$proxy" == http* ]] || proxy="https://proxy.golang.org"
  dir="$fp/github.com/minio/minio/@v"
  mkdir -p "$dir"
  for ext in mod zip; do
    [[ -s "$dir/$v.$ext" ]] || curl -fsSL --retry 3 -o "$dir/$v.$ext.tmp" "$proxy/github.com/minio/minio/@v/$v.$ext" \
      || die "downloading minio $v.$ext from $proxy failed"
    [[ -s "$dir/$v.$ext.tmp" ]] && mv "$dir/$v.$ext.tmp" "$dir/$v.$ext"
  done
  echo "$MINIO_MODULE_ZIP_SHA256  $dir/$v.zip" | sha256sum --check --quiet - \
    || { rm -f "$dir/$v.zip"; die "minio module zip does not match MINIO_MODULE_ZIP_SHA256 in hack/versions.env"; }
  printf '{"Version":"%s","Time":"%s"}\n' "$v" "$MINIO_MODULE_TIME" > "$dir/$v.info"
  echo "$v" > "$dir/list"
  log "WARNING: the checksum database has no entry for github.com/minio/minio@$v; it is verified by the"
  log "WARNING: pinned SHA-256 instead (GONOSUMDB=github.com/minio/minio); its dependencies are checked as usual."
  GOPROXY="file://$fp,$(go env GOPROXY)" GONOSUMDB="github.com/minio/minio" \
    go_install_to "$out" "-s -w -X github.com/minio/minio/cmd.Version=$MINIO_VERSION -X github.com/minio/minio/cmd.ReleaseTag=$MINIO_VERSION" \
    "github.com/minio/minio@$v"
}

build_kueue() {
  local out="$cache/kueue-$KUEUE_VERSION"
  [[ -x "$out/bin/kueue" && -d "$out/crd" && -f "$out/webhook-manifests.yaml" ]] && return
  log "building kueue $KUEUE_VERSION"
  [[ -x "$out/bin/kueue" ]] || go_install_to "$out" "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # The manager installs none of its CRDs or webhook configurations: keep the module's files beside the binary.
  local moddir; moddir="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$out/crd" && cp -r "$moddir/config/components/crd/bases" "$out/crd" && chmod -R u+w "$out/crd"
  cp "$moddir/config/components/webhook/manifests.yaml" "$out/webhook-manifests.yaml" && chmod u+w "$out/webhook-manifests.yaml"
}

build_training_operator() {
  local out="$cache/training-operator-$TRAINING_OPERATOR_VERSION"
  [[ -x "$out/bin/training-operator" && -d "$out/crd" ]] && return
  log "building the Kubeflow training operator $TRAINING_OPERATOR_VERSION"
  local w="$cache/.wrap-training-operator"
  new_wrapper "$w"
  cd "$w"
  go get "github.com/kubeflow/training-operator/cmd/training-operator.v1@$TRAINING_OPERATOR_VERSION" >/dev/null
  mkdir -p "$out/bin.tmp"
  go build -ldflags "-s -w" -o "$out/bin.tmp/training-operator" github.com/kubeflow/training-operator/cmd/training-operator.v1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  local moddir; moddir="$(go list -m -json "github.com/kubeflow/training-operator" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$out/crd" && cp -r "$moddir/manifests/base/crds" "$out/crd" && chmod -R u+w "$out/crd"
  cd - >/dev/null
}

components=("$@")
[[ ${#components[@]} -eq 0 ]] && components=(etcd kwok helm minio kubernetes kueue)
check_sumdb
for c in "${components[@]}"; do
  case "$c" in
    kubernetes|etcd|kwok|helm|minio|kueue) "build_$c" ;;
    training-operator) build_training_operator ;;
    *) die "unknown component '$c' (expected: kubernetes etcd kwok helm minio kueue training-operator)" ;;
  esac
  log "$c ready"
done
