// SPDX-License-Identifier: GPL-2.0
/* l2switch_slow: the l2switch NF, deliberately slower, for the tests of
 * bench.CompareVariants and `morpheus bench --against`.
 *
 * It is the NF's own source with every bpf_ktime_get_ns() replaced by
 * SLOW_READS reads of the clock (the last one is used), so it behaves like
 * the original but each packet costs several hundred nanoseconds more:
 * far beyond the measurement noise.
 *
 * Rebuild from the repository root:
 *   clang -O2 -g -target bpf -I nf/include -I/usr/include/x86_64-linux-gnu \
 *     -c bench/testdata/l2switch_slow.c -o bench/testdata/l2switch_slow.o
 */
#include "nf.h"

#define SLOW_READS 16

static __always_inline __u64 slow_ktime_get_ns(void)
{
	__u64 t = 0;
#pragma unroll
	for (int i = 0; i < SLOW_READS; i++)
		t = bpf_ktime_get_ns();
	return t;
}

#define bpf_ktime_get_ns slow_ktime_get_ns
#include "../../nf/l2switch/bpf/l2switch.c"
