/* Payload statistics for XDP.
 *
 * Exercises loops in the three shapes clang and the verifier know: a fully
 * unrolled VLAN walk, bounded loops the compiler keeps as loops (a length
 * histogram and a 16-bit word sum over a variable-offset packet pointer), and
 * a bpf_loop() callback that scans payload bytes through bpf_xdp_load_bytes.
 * Configuration is in .rodata (volatile const), counters in .bss, the sum
 * seed in .data.
 */
#include "corpus.h"

#define MAX_VLANS 3
#define MAX_WORDS 64
#define HIST_BUCKETS 16

volatile const __u32 cfg_max_words = 24;
volatile const __u32 cfg_scan_bytes = 48;
volatile const __u8 cfg_stamp = 1;

__u64 frames_seen;
__u64 words_summed;
__u32 sum_seed = 0x1d0f;

struct len_hist {
	__u64 buckets[HIST_BUCKETS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct len_hist);
} frame_lengths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} scan_iterations SEC(".maps");

struct scan_state {
	struct xdp_md *ctx;
	__u32 off;
	__u32 end;
	__u32 zeros;
	__u32 ones;
};

static long scan_byte(__u32 i, void *arg)
{
	struct scan_state *s = arg;
	__u8 b;

	if (s->off + i >= s->end)
		return 1;
	if (bpf_xdp_load_bytes(s->ctx, s->off + i, &b, 1))
		return 1;
	if (b == 0)
		s->zeros++;
	else if (b == 0xff)
		s->ones++;
	return 0;
}

SEC("xdp")
int xdp_payload_stats(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < MAX_VLANS; i++) {
		struct vlan_hdr *vh = data + off;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return XDP_DROP;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	__sync_fetch_and_add(&frames_seen, 1);

	__u32 len = data_end - data;
	__u32 bucket = 0;
#pragma clang loop unroll(disable)
	for (int b = 0; b < HIST_BUCKETS - 1; b++) {
		if ((len >> b) <= 32)
			break;
		bucket++;
	}
	__u32 hkey = proto == bpf_htons(ETH_P_IP) ? 0 : 1;
	struct len_hist *h = bpf_map_lookup_elem(&frame_lengths, &hkey);
	if (h && bucket < HIST_BUCKETS)
		__sync_fetch_and_add(&h->buckets[bucket], 1);

	if (proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = data + off;
	if ((void *)(ip + 1) > data_end)
		return XDP_DROP;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return XDP_DROP;
	off += ihl;

	__u32 sum = sum_seed;
	__u32 words = 0;
	__u16 *w = data + off;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_WORDS; i++) {
		if (i >= cfg_max_words)
			break;
		if ((void *)(w + 1) > data_end)
			break;
		sum += *w;
		w++;
		words++;
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	words_summed += words;

	struct scan_state st = { .ctx = ctx, .off = off, .end = len };
	long n = bpf_loop(cfg_scan_bytes, scan_byte, &st, 0);
	__u32 zero = 0;
	__u64 *iters = bpf_map_lookup_elem(&scan_iterations, &zero);
	if (iters && n > 0)
		*iters += n;

	if (st.zeros > st.ones + 16)
		return XDP_DROP;
	if (cfg_stamp) {
		__u8 tmp[ETH_ALEN];

		__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
		eth->h_source[4] = sum >> 8;
		eth->h_source[5] = sum & 0xff;
		return XDP_TX;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
