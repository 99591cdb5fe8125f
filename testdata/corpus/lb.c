/* L4 load balancer front end.
 *
 * An entry program dispatches by EtherType through a PROG_ARRAY of tail
 * calls (statically initialised, libbpf style). The IPv4 path finds the VIP's
 * backend pool in a HASH_OF_MAPS, picks a backend by flow hash, encapsulates
 * the frame in IPIP with bpf_xdp_adjust_head and sends it through a DEVMAP
 * with bpf_redirect_map (falling back to XDP_TX). The IPv6 path trims
 * Ethernet padding with bpf_xdp_adjust_tail and picks its pool from an
 * ARRAY_OF_MAPS.
 */
#include "corpus.h"

#define POOL_SIZE 8
#define V6_POOLS 16
#define TX_PORTS 64

struct vip_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct backend {
	__be32 addr;
	__u32 port;
	__u8 mac[ETH_ALEN];
	__u16 weight;
};

struct backend_pool {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POOL_SIZE);
	__type(key, __u32);
	__type(value, struct backend);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 64);
	__type(key, struct vip_key);
	__array(values, struct backend_pool);
} vip_pools SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, V6_POOLS);
	__type(key, __u32);
	__array(values, struct backend_pool);
} v6_pools SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

enum lb_stat {
	LB_ENTRY,
	LB_V4,
	LB_V6,
	LB_NO_VIP,
	LB_NO_BACKEND,
	LB_ENCAP_FAIL,
	LB_TRIMMED,
	LB_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lb_stats SEC(".maps");

/* The last backend chosen, for debugging from user space. Also gives BTF
 * the complete struct backend that the inner map definitions refer to. */
struct backend last_backend;

volatile const __be32 cfg_tunnel_src = 0x0100000a; /* 10.0.0.1 */
volatile const __u8 cfg_hash_sport = 1;

static __always_inline void stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lb_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 rol32(__u32 w, int s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 flow_hash(__u32 a, __u32 b, __u32 c)
{
	a += 0xdeadbeef;
	b += 0xdeadbeef;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("xdp")
int xdp_lb_v4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct vip_key vk = {};
	__be16 sport = 0;

	stat(LB_V4);
	if ((void *)(ip + 1) > data_end)
		return XDP_DROP;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	vk.addr = ip->daddr;
	vk.proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);

		if ((void *)(uh + 1) > data_end)
			return XDP_DROP;
		vk.port = uh->dest;
		sport = uh->source;
	}

	void *pool = bpf_map_lookup_elem(&vip_pools, &vk);
	if (!pool) {
		vk.port = 0;
		pool = bpf_map_lookup_elem(&vip_pools, &vk);
	}
	if (!pool) {
		stat(LB_NO_VIP);
		return XDP_PASS;
	}
	__u32 h = flow_hash(ip->saddr, cfg_hash_sport ? sport : 0, ip->protocol);
	__u32 slot = h % POOL_SIZE;
	struct backend *be = bpf_map_lookup_elem(pool, &slot);
	if (!be || be->addr == 0) {
		stat(LB_NO_BACKEND);
		return XDP_DROP;
	}

	last_backend = *be;
	__u16 inner_len = bpf_ntohs(ip->tot_len);
	__u8 tos = ip->tos;
	__be32 daddr = be->addr;
	__u32 port = be->port;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, be->mac, ETH_ALEN);

	if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct iphdr))) {
		stat(LB_ENCAP_FAIL);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct ethhdr *oeth = data + sizeof(struct iphdr);
	struct iphdr *outer = (void *)(neth + 1);
	if ((void *)(oeth + 1) > data_end || (void *)(outer + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(neth->h_source, oeth->h_dest, ETH_ALEN);
	__builtin_memcpy(neth->h_dest, mac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IP);

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = bpf_htons(0x4000);
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = cfg_tunnel_src;
	outer->daddr = daddr;
	outer->check = ip_checksum(outer);

	return bpf_redirect_map(&tx_ports, port % TX_PORTS, XDP_TX);
}

SEC("xdp")
int xdp_lb_v6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	stat(LB_V6);
	if ((void *)(ip6 + 1) > data_end)
		return XDP_DROP;

	__u32 frame = data_end - data;
	__u32 want = sizeof(*eth) + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	__u32 h = flow_hash(ip6->saddr.s6_addr32[3], ip6->daddr.s6_addr32[3],
			    ip6->daddr.s6_addr32[2] ^ ip6->nexthdr);
	__u32 idx = ip6->daddr.s6_addr32[3] % V6_POOLS;

	if (frame > want) {
		int delta = frame - want;

		if (delta > 64)
			return XDP_DROP;
		if (bpf_xdp_adjust_tail(ctx, -delta))
			return XDP_DROP;
		stat(LB_TRIMMED);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		if ((void *)(eth + 1) > data_end)
			return XDP_DROP;
	}

	void *pool = bpf_map_lookup_elem(&v6_pools, &idx);
	if (!pool) {
		stat(LB_NO_VIP);
		return XDP_PASS;
	}
	__u32 slot = h % POOL_SIZE;
	struct backend *be = bpf_map_lookup_elem(pool, &slot);
	if (!be || be->addr == 0) {
		stat(LB_NO_BACKEND);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	return bpf_redirect_map(&tx_ports, be->port % TX_PORTS, XDP_PASS);
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__uint(key_size, sizeof(__u32));
	__array(values, int(void *));
} lb_jump SEC(".maps") = {
	.values = {
		[0] = (void *)&xdp_lb_v4,
		[1] = (void *)&xdp_lb_v6,
	},
};

SEC("xdp")
int xdp_lb_entry(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	stat(LB_ENTRY);
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		bpf_tail_call(ctx, &lb_jump, 0);
		break;
	case bpf_htons(ETH_P_IPV6):
		bpf_tail_call(ctx, &lb_jump, 1);
		break;
	default:
		return XDP_PASS;
	}
	/* The tail call only returns when the slot is empty. */
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "GPL";
