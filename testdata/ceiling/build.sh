#!/bin/sh
# Rebuilds the ceiling experiment's objects from the repository root:
#   sh testdata/ceiling/build.sh
# (after `go run ./testdata/ceiling/gen` if the scenarios or the NFs' maps
# changed). Each variant is its NF's copied source built with the knobs
# listed at the top of l2switch.c and lb.c.
set -eu
cd "$(dirname "$0")"
cc() {
	out=$1
	shift
	clang -O2 -g -target bpf -I../../nf/include -I/usr/include/x86_64-linux-gnu "$@" -c "${out%%_*}.c" -o "$out.o"
}
cc l2switch_copy
cc l2switch_no_clock -DNO_CLOCK
cc l2switch_no_stats -DNO_STATS
cc l2switch_no_learn -DNO_LEARN
cc l2switch_no_forward -DNO_FORWARD
cc l2switch_no_tagging -DNO_TAGGING
cc l2switch_free_ports -DFREE_PORTS
cc l2switch_free_vlans -DFREE_VLANS
cc l2switch_free_src -DFREE_SRC
cc l2switch_free_dst -DFREE_DST
cc l2switch_oracle -DORACLE
cc l2switch_oracle_nolearn -DORACLE -DNO_LEARN
cc l2switch_wide_keys -DWIDE_KEYS
cc lb_copy
cc lb_no_clock -DNO_CLOCK
cc lb_no_counters -DNO_COUNTERS
cc lb_no_lru -DNO_LRU
cc lb_no_encap -DNO_ENCAP
cc lb_free_vips -DFREE_VIPS
cc lb_free_backends -DFREE_BACKENDS
cc lb_oracle -DORACLE
cc lb_wide_keys -DWIDE_KEYS
