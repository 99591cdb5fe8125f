#!/bin/sh
# Builds the round-trip corpus: every C file in this directory at BPF CPU
# versions v1, v2 and v3 with -O2, plus loops.c and conntrack.c at -O1, into
# NAME_vN.o / NAME_vN_O1.o next to the sources. The objects are committed, so
# the tests need no clang; rerun this (or `go generate ./program`) after
# editing a source.
#
# Needs clang and llvm-strip (LLVM 14 or newer) and the libbpf headers
# (apt-get install clang llvm libbpf-dev). Set CLANG / STRIP to override.
set -eu

cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
STRIP=${STRIP:-llvm-strip}
ARCH_INCLUDE=/usr/include/$(uname -m)-linux-gnu

build() {
	src=$1 out=$2
	shift 2
	"$CLANG" -target bpf -g -Wall -Werror -I. -I"$ARCH_INCLUDE" "$@" -c "$src" -o "$out"
	# Keep BTF and .BTF.ext (func and line info), drop DWARF.
	"$STRIP" -g "$out"
}

for src in *.c; do
	name=${src%.c}
	for cpu in v1 v2 v3; do
		build "$src" "${name}_${cpu}.o" -O2 -mcpu="$cpu"
	done
done
build loops.c loops_v3_O1.o -O1 -mcpu=v3
build conntrack.c conntrack_v2_O1.o -O1 -mcpu=v2
