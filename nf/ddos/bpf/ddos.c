// SPDX-License-Identifier: GPL-2.0
/* ddos: per-source IPv4 DDoS mitigation.
 *
 * In order: a source in the exact blocklist or inside a blocklisted prefix
 * is dropped; every other IPv4 packet is counted against its source in the
 * rate table (written here, by the data plane) and dropped once the source
 * has sent more than rate_limit_packets in the current window of
 * rate_window_ns. Counting is per CPU (a per-CPU hash, no atomics): with RSS
 * a source's flows usually land on one queue, and the limit is per queue.
 * Dropped packets keep counting, so a flooding source stays limited for the
 * whole window.
 *
 * IPv6 and non-IP frames pass untouched; malformed IPv4 is dropped. When the
 * rate table is full a new source passes untracked (and is counted), so an
 * attack with random sources cannot make legitimate traffic fail closed.
 */
#include "nf.h"

#define DDOS_MAX_BLOCKED 65536
#define DDOS_MAX_PREFIXES 16384
#define DDOS_MAX_SOURCES 65536

enum ddos_stat {
	DDOS_STAT_PASS = 0,
	DDOS_STAT_PASS_IPV6 = 1,
	DDOS_STAT_PASS_NON_IP = 2,
	DDOS_STAT_DROP_BLOCKED = 3,
	DDOS_STAT_DROP_PREFIX = 4,
	DDOS_STAT_DROP_RATE = 5,
	DDOS_STAT_DROP_MALFORMED = 6,
	DDOS_STAT_UNTRACKED = 7, /* passed: rate table full */
	DDOS_STAT_MAX = 8,
};

struct ddos_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct ddos_block {
	__u32 reason; /* a code chosen by the control plane */
	__u32 pad;
};

struct ddos_rate {
	__u64 window_start_ns;
	__u64 packets; /* in the current window, on this CPU */
};

struct ddos_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DDOS_MAX_BLOCKED);
	__type(key, __be32);
	__type(value, struct ddos_block);
} blocklist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DDOS_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ddos_lpm_key);
	__type(value, struct ddos_block);
} blocklist_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DDOS_MAX_SOURCES);
	__type(key, __be32);
	__type(value, struct ddos_rate);
} rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DDOS_STAT_MAX);
	__type(key, __u32);
	__type(value, struct ddos_counter);
} stats SEC(".maps");

/* Packets a source may send per window (0 disables rate limiting) and the
 * window length. Set before load. */
volatile const __u64 rate_limit_packets = 1000;
volatile const __u64 rate_window_ns = 1000000000ULL;

static __always_inline void ddos_count(__u32 idx, __u64 bytes)
{
	struct ddos_counter *c = bpf_map_lookup_elem(&stats, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

enum ddos_rate_result {
	DDOS_RATE_OK = 0,
	DDOS_RATE_OVER = 1,
	DDOS_RATE_UNTRACKED = 2,
};

/* ddos_rate_check counts one packet of saddr and reports whether the
 * source is over its limit. Out of line: it is the one place that writes
 * the rate table. */
static __noinline int ddos_rate_check(__be32 saddr)
{
	__u64 now = bpf_ktime_get_ns();
	struct ddos_rate *r = bpf_map_lookup_elem(&rate, &saddr);

	if (!r) {
		struct ddos_rate fresh = { .window_start_ns = now, .packets = 1 };
		if (bpf_map_update_elem(&rate, &saddr, &fresh, BPF_NOEXIST) == 0)
			return 1 > rate_limit_packets ? DDOS_RATE_OVER : DDOS_RATE_OK;
		/* Either another CPU inserted the source meanwhile, or the
		 * table is full. */
		r = bpf_map_lookup_elem(&rate, &saddr);
		if (!r)
			return DDOS_RATE_UNTRACKED;
	}
	if (now - r->window_start_ns >= rate_window_ns) {
		r->window_start_ns = now;
		r->packets = 1;
	} else {
		r->packets++;
	}
	return r->packets > rate_limit_packets ? DDOS_RATE_OVER : DDOS_RATE_OK;
}

SEC("xdp")
int xdp_ddos(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct nf_pkt p;

	if (nf_parse(&p, data, data_end) != NF_OK) {
		ddos_count(DDOS_STAT_DROP_MALFORMED, bytes);
		return XDP_DROP;
	}
	if (p.l3_proto == ETH_P_IPV6) {
		ddos_count(DDOS_STAT_PASS_IPV6, bytes);
		return XDP_PASS;
	}
	if (p.l3_proto != ETH_P_IP || !p.ip4) {
		ddos_count(DDOS_STAT_PASS_NON_IP, bytes);
		return XDP_PASS;
	}

	__be32 saddr = p.ip4->saddr;
	if (bpf_map_lookup_elem(&blocklist, &saddr)) {
		ddos_count(DDOS_STAT_DROP_BLOCKED, bytes);
		return XDP_DROP;
	}
	struct ddos_lpm_key k = { .prefixlen = 32, .addr = saddr };
	if (bpf_map_lookup_elem(&blocklist_lpm, &k)) {
		ddos_count(DDOS_STAT_DROP_PREFIX, bytes);
		return XDP_DROP;
	}
	if (rate_limit_packets) {
		switch (ddos_rate_check(saddr)) {
		case DDOS_RATE_OVER:
			ddos_count(DDOS_STAT_DROP_RATE, bytes);
			return XDP_DROP;
		case DDOS_RATE_UNTRACKED:
			ddos_count(DDOS_STAT_UNTRACKED, bytes);
			return XDP_PASS;
		}
	}
	ddos_count(DDOS_STAT_PASS, bytes);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
