// SPDX-License-Identifier: GPL-2.0
/* router: IPv4 longest-prefix-match forwarding in XDP.
 *
 * A frame arriving on an enabled interface is parsed; IPv4 packets are looked
 * up in the `routes` LPM trie, their TTL is decremented (with an incremental
 * header checksum update), the MAC addresses are rewritten for the next hop
 * and the frame leaves through bpf_redirect, or XDP_TX when it goes back out
 * of the interface it came in on. Whatever the fast path cannot handle (ARP,
 * IPv6, TTL expiry, local and multicast destinations, disabled interfaces)
 * goes to the kernel stack with XDP_PASS, so the kernel answers ARP and sends
 * ICMP errors. Malformed IPv4 packets are dropped.
 */
#include "nf.h"

#define MAX_IFINDEX 256
#define MAX_NEXTHOPS 1024
#define MAX_ROUTES 16384

/* Route flags. A route without flags forwards to its next hop. */
#define ROUTE_F_LOCAL 0x1     /* deliver to the local stack (XDP_PASS) */
#define ROUTE_F_BLACKHOLE 0x2 /* drop silently */

/* Interface flags. */
#define IF_F_ENABLED 0x1      /* the fast path routes frames from/to it */
#define IF_F_STRICT_DMAC 0x2  /* only route frames sent to the interface MAC */
#define IF_F_ROUTE_TAGGED 0x4 /* route single-tagged 802.1Q frames too */

struct route_key {
	__u32 prefixlen;
	__be32 addr;
};

struct route {
	__u32 nexthop; /* index into nexthops */
	__u32 flags;   /* ROUTE_F_* */
};

struct nexthop {
	__u32 ifindex;        /* egress interface; 0 = unusable */
	__u8 dmac[ETH_ALEN];  /* neighbour MAC */
	__u16 vlan;           /* egress VLAN id, 0 = untagged */
};

struct iface {
	__u32 flags;         /* IF_F_* */
	__u8 mac[ETH_ALEN];  /* interface MAC: source MAC of routed frames */
	__u16 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

enum counter_index {
	CNT_RX = 0,            /* every frame seen */
	CNT_FORWARDED,         /* redirected to another interface */
	CNT_TX,                /* sent back out of the ingress interface */
	CNT_DROP_NO_ROUTE,     /* no route, or route to an unusable next hop */
	CNT_DROP_BLACKHOLE,    /* blackhole route */
	CNT_TTL_EXCEEDED,      /* TTL <= 1: passed to the stack for ICMP */
	CNT_MALFORMED,         /* truncated or invalid headers: dropped */
	CNT_NON_IP,            /* not IPv4: passed to the stack */
	CNT_LOCAL,             /* local, multicast or broadcast destination */
	CNT_SLOW_PATH,         /* interface or frame not handled by the fast path */
	CNT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct route_key);
	__type(value, struct route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NEXTHOPS);
	__type(key, __u32);
	__type(value, struct nexthop);
} nexthops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct iface);
} ifconfig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

static __always_inline void count(__u32 idx, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* forward rewrites a routable frame for its next hop: TTL and checksum,
 * MAC addresses, then the egress VLAN tag (push, pop or rewrite). It is kept
 * out of line as a bpf-to-bpf call: it is the one piece of the program that
 * writes the packet. l3_off is 14 (untagged) or 18 (one tag). */
static __noinline int forward(struct xdp_md *ctx, __u32 l3_off,
			      const struct nexthop *nh,
			      const struct iface *egress, __u32 in_ifindex)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int tagged = l3_off != sizeof(struct ethhdr);

	if (l3_off > sizeof(struct ethhdr) + sizeof(struct vlan_hdr))
		return XDP_ABORTED;
	struct iphdr *ip = data + l3_off;
	if ((void *)(ip + 1) > data_end)
		return XDP_ABORTED;

	nf_ipv4_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, egress->mac, ETH_ALEN);

	if (tagged && nh->vlan) {
		if (nf_vlan_set_vid(data, data_end, nh->vlan))
			return XDP_ABORTED;
	} else if (tagged) {
		if (nf_vlan_pop(ctx))
			return XDP_ABORTED;
	} else if (nh->vlan) {
		if (nf_vlan_push(ctx, nh->vlan))
			return XDP_ABORTED;
	}

	if (nh->ifindex == in_ifindex)
		return XDP_TX;
	return bpf_redirect(nh->ifindex, 0);
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 in_ifindex = ctx->ingress_ifindex;
	struct nf_pkt p = {};

	count(CNT_RX, len);

	const struct iface *in = bpf_map_lookup_elem(&ifconfig, &in_ifindex);
	if (!in || !(in->flags & IF_F_ENABLED)) {
		count(CNT_SLOW_PATH, len);
		return XDP_PASS;
	}

	p.data = data;
	p.data_end = data_end;
	if (nf_parse_eth(&p) != NF_OK) {
		count(CNT_MALFORMED, len);
		return XDP_DROP;
	}
	if (p.l3_proto != ETH_P_IP) {
		count(CNT_NON_IP, len);
		return XDP_PASS;
	}
	if (p.l3_off != sizeof(struct ethhdr)) {
		/* Tagged: one tag may be routed if the interface allows it;
		 * QinQ belongs to the stack. */
		if (p.l3_off != sizeof(struct ethhdr) + sizeof(struct vlan_hdr) ||
		    !(in->flags & IF_F_ROUTE_TAGGED)) {
			count(CNT_SLOW_PATH, len);
			return XDP_PASS;
		}
	}
	if (nf_parse_ipv4(&p) != NF_OK) {
		count(CNT_MALFORMED, len);
		return XDP_DROP;
	}
	struct iphdr *ip = p.ip4;
	if (!ip) {
		count(CNT_MALFORMED, len);
		return XDP_DROP;
	}

	if ((in->flags & IF_F_STRICT_DMAC) &&
	    !nf_mac_equal(p.eth->h_dest, in->mac)) {
		count(CNT_SLOW_PATH, len);
		return XDP_PASS;
	}

	/* Multicast (224/4) and limited broadcast are never routed here. */
	if ((bpf_ntohl(ip->daddr) & 0xF0000000) == 0xE0000000 ||
	    ip->daddr == 0xFFFFFFFF) {
		count(CNT_LOCAL, len);
		return XDP_PASS;
	}

	if (ip->ttl <= 1) {
		count(CNT_TTL_EXCEEDED, len);
		return XDP_PASS;
	}

	struct route_key key = { .prefixlen = 32, .addr = ip->daddr };
	const struct route *rt = bpf_map_lookup_elem(&routes, &key);
	if (!rt) {
		count(CNT_DROP_NO_ROUTE, len);
		return XDP_DROP;
	}
	if (rt->flags & ROUTE_F_BLACKHOLE) {
		count(CNT_DROP_BLACKHOLE, len);
		return XDP_DROP;
	}
	if (rt->flags & ROUTE_F_LOCAL) {
		count(CNT_LOCAL, len);
		return XDP_PASS;
	}

	__u32 nh_idx = rt->nexthop;
	const struct nexthop *nh = bpf_map_lookup_elem(&nexthops, &nh_idx);
	if (!nh || nh->ifindex == 0) {
		count(CNT_DROP_NO_ROUTE, len);
		return XDP_DROP;
	}
	__u32 out_ifindex = nh->ifindex;
	const struct iface *out = bpf_map_lookup_elem(&ifconfig, &out_ifindex);
	if (!out || !(out->flags & IF_F_ENABLED)) {
		count(CNT_SLOW_PATH, len);
		return XDP_PASS;
	}

	int action = forward(ctx, p.l3_off, nh, out, in_ifindex);
	if (action == XDP_TX)
		count(CNT_TX, len);
	else if (action == XDP_REDIRECT)
		count(CNT_FORWARDED, len);
	else
		count(CNT_MALFORMED, len);
	return action;
}

char LICENSE[] SEC("license") = "GPL";
