#!/bin/sh
# Run in the image's build with JIT=no, before PostgreSQL is installed: dpkg then leaves out
# the files only PostgreSQL's JIT uses (its LLVM provider, the bitcode it inlines, LLVM and the
# Z3 solver only LLVM links). The packages still count as installed, so later `apt-get install`
# in a derived image keeps working; PostgreSQL without its provider reports
# pg_jit_available() = false and runs every query interpreted, as with `jit = off`.
set -eu
cat >/etc/dpkg/dpkg.cfg.d/pgwarden-nojit <<'CFG'
# JIT=no (docker/nojit.sh): PostgreSQL's JIT provider and what only it needs.
path-exclude /usr/lib/postgresql/*/lib/llvmjit*.so
path-exclude /usr/lib/postgresql/*/lib/bitcode/*
path-exclude /usr/lib/x86_64-linux-gnu/libLLVM-*.so*
path-exclude /usr/lib/aarch64-linux-gnu/libLLVM-*.so*
path-exclude /usr/lib/x86_64-linux-gnu/libz3.so*
path-exclude /usr/lib/aarch64-linux-gnu/libz3.so*
CFG
