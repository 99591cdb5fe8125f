/* Flow cache with lazily refreshed timestamps.
 *
 * Every TCP or UDP flow over IPv4 gets an entry with its verdict and the
 * time it was last seen. Like many caches, it keeps its own write traffic
 * low: a known flow's timestamp is refreshed only when it is more than a
 * second old, and pinned flows are never touched. The lookup, the refresh
 * and the insert of a new flow live in a __noinline helper that receives
 * the key by pointer from its caller's stack. New flows take their verdict
 * from a port policy hash the control plane fills; verdict counters are a
 * plain array.
 */
#include "corpus.h"

#define FLOW_PINNED 0x1
#define REFRESH_NS 1000000000ULL

struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow {
	__u64 last_seen;
	__u32 verdict;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u32);
} port_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __noinline __u32 flow_verdict(const struct flow_key *k, __u64 now)
{
	struct flow *f = bpf_map_lookup_elem(&flows, k);

	if (f) {
		if (!(f->flags & FLOW_PINNED) && now - f->last_seen > REFRESH_NS)
			f->last_seen = now;
		return f->verdict;
	}
	__u16 port = bpf_ntohs(k->dport);
	__u32 *v = bpf_map_lookup_elem(&port_policy, &port);
	struct flow n = { .last_seen = now, .verdict = v ? *v : XDP_PASS };

	bpf_map_update_elem(&flows, k, &n, BPF_NOEXIST);
	return n.verdict;
}

SEC("xdp")
int xdp_flowcache(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct flow_key k = {};

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return XDP_PASS;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	/* Source and destination ports sit at the same offsets in both. */
	struct udphdr *l4 = (void *)(ip + 1);
	if ((void *)(l4 + 1) > data_end)
		return XDP_PASS;
	k.saddr = ip->saddr;
	k.daddr = ip->daddr;
	k.sport = l4->source;
	k.dport = l4->dest;
	k.proto = ip->protocol;

	__u32 verdict = flow_verdict(&k, bpf_ktime_get_ns());
	__u32 idx = verdict == XDP_DROP;
	__u64 *c = bpf_map_lookup_elem(&verdicts, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
	return verdict == XDP_DROP ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
