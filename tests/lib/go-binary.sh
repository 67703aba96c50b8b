# Sourced by the scripts that build the tests' tools from Go modules (tests/helm/build.sh,
# tests/toxiproxy/build.sh): one binary from the module whose go.mod/go.sum sit in a directory
# of the repository, built once into a cache outside it and reused after.
#
#   go_binary OUT MODULE_DIR PACKAGE LDFLAGS WHAT
#
# builds PACKAGE (as named in MODULE_DIR's go.mod) into the file OUT unless it exists, logging
# WHAT ("helm v3.22.0 (a few minutes on 2 cores, once)") on stderr, and prints OUT on stdout.
# Test binaries may ask for the same tool at once: one builds, the others wait and reuse it.

go_binary() {
    local out=$1 module=$2 package=$3 ldflags=$4 what=$5
    local name
    name=$(basename "$(dirname "$module")")/$(basename "$module")
    if [ ! -x "$out" ]; then
        # Go is on our machines for building test binaries only, and not always on PATH.
        if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
            export PATH="$PATH:/usr/local/go/bin"
        fi
        if ! command -v go >/dev/null 2>&1; then
            echo "$name: go not found (on PATH or at /usr/local/go/bin/go): cannot build $what" >&2
            return 1
        fi
        mkdir -p "$(dirname "$out")"
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$out.build.lock"
            flock 9
        fi
        if [ ! -x "$out" ]; then
            echo "$name: building $what" >&2
            (
                export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
                cd "$module" && nice -n 19 go build -trimpath -ldflags "$ldflags" \
                    -o "$out.tmp.$$" "$package"
            ) || { rm -f "$out.tmp.$$"; return 1; }
            mv -f "$out.tmp.$$" "$out"
        fi
    fi
    echo "$out"
}
