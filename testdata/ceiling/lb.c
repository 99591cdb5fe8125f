// SPDX-License-Identifier: GPL-2.0
/* Ceiling experiment: variants of the lb NF (nf/lb/bpf/lb.c, copied below
 * with the knobs marked CEILING), for `morpheus bench --against`. Each build
 * defines at most a few of:
 *
 *   NO_CLOCK       no bpf_ktime_get_ns(): connection timestamps are 0
 *   NO_COUNTERS    no per-CPU stats lookups (and so no counter updates)
 *   NO_LRU         the conns lookup answered by the compiled-in table of the
 *                  pinned flows: no LRU lookup, no LRU refresh and no
 *                  last_seen_ns write (unknown flows take the map)
 *   NO_ENCAP       no encapsulation: XDP_TX the frame as it came
 *   FREE_VIPS      vips lookups answered by the compiled-in table
 *   FREE_BACKENDS  backends lookups answered by the compiled-in addresses
 *   ORACLE         FREE_VIPS + FREE_BACKENDS
 *   WIDE_KEYS      no lookup removed: the vips and conns keys are written to
 *                  the stack as whole 64-bit words instead of field by field,
 *                  so the helper's hash reads them without a store-forwarding
 *                  stall (an exact bytecode rewrite: store merging)
 *
 * NO_* variants change what the NF does (they attribute cost); FREE_*
 * variants and ORACLE behave exactly like the original on the warmed bench
 * scenario (the tables hold every vips and backends entry). The ring is
 * read only for flows without a connection entry, which the warmed
 * scenario does not have.
 */
#ifdef ORACLE
#define FREE_VIPS
#define FREE_BACKENDS
#endif
/* lb: a Katran-like L4 load balancer for IPv4 VIPs.
 *
 * A packet whose (destination, port, protocol) is a configured VIP is sent
 * to one of the VIP's backends, encapsulated in IP-in-IP (outer source =
 * local_ip, outer destination = backend), with the Ethernet destination set
 * to the gateway and bounced out of the receiving interface (XDP_TX).
 *
 * Backend choice: established flows stick to the backend recorded in the
 * conns LRU table (written here, by the data plane); new flows hash their
 * 5-tuple onto the VIP's slice of the consistent-hash ring the control plane
 * fills (Maglev). A TCP SYN always takes the ring, so a new connection sees
 * the current backend set, and then pins the flow.
 *
 * ICMP echo requests to a VIP address are answered here (XDP_TX). Everything
 * else goes to the kernel stack (XDP_PASS); malformed IPv4 is dropped, and so
 * are fragments addressed to a VIP, since a fragment cannot be hashed
 * consistently with the rest of its datagram.
 */
#include "nf.h"
#include "oracle.h"

#define LB_MAX_VIPS 256
#define LB_RING_SIZE 1021 /* prime, as Maglev requires */
#define LB_MAX_BACKENDS 4096
#define LB_MAX_CONNS 65536
#define LB_OUTER_TTL 64

/* VIP flags. */
#define LB_F_HASH_NO_SRC_PORT 0x1 /* hash without the source port (sticky per client) */
#define LB_F_LRU_BYPASS 0x2       /* never read or write the connection table */

/* A VIP is (address, port, protocol); port 0 matches any port. Every VIP
 * address also has an address entry (port 0, protocol 0) that marks it for
 * ICMP echo replies and fragment drops, which carry no usable port. */
struct vip_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct vip_meta {
	__u32 index;  /* selects the VIP's slice of the ring */
	__u32 flags;
};

struct backend {
	__be32 addr;  /* 0: unused slot */
	__u32 flags;
};

struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct conn {
	__u32 backend;
	__u32 pad;
	__u64 last_seen_ns;
};

struct lb_counter {
	__u64 packets;
	__u64 bytes;
};

enum lb_stat {
	LB_STAT_PASS = 0,          /* not for a VIP */
	LB_STAT_TX = 1,            /* encapsulated and sent */
	LB_STAT_CONN_HIT = 2,      /* backend taken from the connection table */
	LB_STAT_CONN_MISS = 3,     /* backend taken from the ring */
	LB_STAT_ICMP_ECHO = 4,     /* echo request to a VIP answered */
	LB_STAT_DROP_MALFORMED = 5,
	LB_STAT_DROP_FRAGMENT = 6,
	LB_STAT_DROP_NO_BACKEND = 7,
	LB_STAT_DROP_ENCAP = 8,    /* headroom or length problem */
	LB_STAT_MAX = 9,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * LB_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_VIPS * LB_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_CONNS);
	__type(key, struct flow_key);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, struct lb_counter);
} stats SEC(".maps");

#if defined(FREE_VIPS) || defined(FREE_BACKENDS) || defined(NO_LRU)
#include "lb_tables.h"
#endif

#ifdef WIDE_KEYS /* CEILING */
#define KEY_ALIGN __attribute__((aligned(8)))
#define WIDE_VIP_KEY(k, addr, port, proto) \
	(*(__u64 *)&(k) = (__u64)(addr) | (__u64)(port) << 32 | (__u64)(proto) << 48)
#define WIDE_FLOW_KEY(k, saddr, daddr, sport, dport, proto)                    \
	do {                                                                   \
		((__u64 *)&(k))[0] = (__u64)(saddr) | (__u64)(daddr) << 32;    \
		((__u64 *)&(k))[1] = (__u64)(sport) | (__u64)(dport) << 16 |   \
				     (__u64)(proto) << 32;                     \
	} while (0)
#else
#define KEY_ALIGN
#define WIDE_VIP_KEY(k, addr, port, proto)
#define WIDE_FLOW_KEY(k, saddr, daddr, sport, dport, proto)
#endif

#ifdef FREE_VIPS /* CEILING: a slot's a and b fields are laid out as struct vip_meta */
/* VIP_LOOKUP builds the key as the 64-bit word the table keys on in a
 * register (writing its parts to the stack and loading them back as one
 * word would stall store forwarding). */
#define VIP_LOOKUP(k) ({                                                                   \
	__u64 __k = (k)->addr | (__u64)(k)->port << 32 | (__u64)(k)->proto << 48;          \
	const struct oracle_slot *__s = oracle_find(oracle_vips, ORACLE_VIPS_BITS, __k);    \
	(struct vip_meta *)(__s ? &__s->a : 0);                                             \
})
#else
#define VIP_LOOKUP(k) bpf_map_lookup_elem(&vips, k)
#endif

#ifdef FREE_BACKENDS /* CEILING: slots past the table read as unused, as the array's do */
static __always_inline __u32 oracle_backend(__u32 b)
{
	/* The barrier keeps clang from dropping the mask, which is what
	 * proves the index in bounds to the verifier. */
	__u32 i = b & (ORACLE_BACKENDS - 1);
	asm volatile("" : "+r"(i));
	return b < ORACLE_BACKENDS ? oracle_backend_addr[i] : 0;
}
#define BACKEND_LOOKUP(b) (&(struct backend){ .addr = oracle_backend(*(b)) })
#else
#define BACKEND_LOOKUP(b) bpf_map_lookup_elem(&backends, b)
#endif

/* Set by the control plane before load. */
volatile const __be32 local_ip = 0;
volatile const __u8 gateway_mac[ETH_ALEN] = {};

static __always_inline void lb_count(__u32 idx, __u64 bytes)
{
#ifdef NO_COUNTERS /* CEILING */
	return;
#endif
	struct lb_counter *c = bpf_map_lookup_elem(&stats, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

#define LB_ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

/* lb_hash is Bob Jenkins' lookup3 final mix over the flow (jhash_3words
 * style). Kept out of line: every VIP packet without a connection entry
 * calls it, and a separate function keeps the hot path small. */
static __noinline __u32 lb_hash(__u32 saddr, __u32 daddr, __u32 ports, __u32 proto)
{
	__u32 a = saddr + 0xdeadbeef + proto;
	__u32 b = daddr + 0xdeadbeef + proto;
	__u32 c = ports + 0xdeadbeef + proto;

	c ^= b; c -= LB_ROT(b, 14);
	a ^= c; a -= LB_ROT(c, 11);
	b ^= a; b -= LB_ROT(a, 25);
	c ^= b; c -= LB_ROT(b, 16);
	a ^= c; a -= LB_ROT(c, 4);
	b ^= a; b -= LB_ROT(a, 14);
	c ^= b; c -= LB_ROT(b, 24);
	return c;
}

/* lb_icmp_echo answers an echo request to a VIP in place. */
static __always_inline int lb_icmp_echo(struct nf_pkt *p)
{
	struct iphdr *ip = p->ip4;
	struct icmphdr *ih = p->l4;
	__be32 tmp;

	/* Re-checked here: the verifier does not connect this pointer to the
	 * parser's check once the protocol byte has been reloaded. */
	if ((void *)(ih + 1) > p->data_end)
		return XDP_PASS;
	if (ih->type != ICMP_ECHO || ih->code != 0)
		return XDP_PASS;
	/* Swapping the addresses leaves the IP checksum unchanged; only the
	 * type byte of the ICMP header changes (8 -> 0). */
	tmp = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = tmp;
	nf_csum_replace2(&ih->checksum, *(__be16 *)&ih->type,
			 bpf_htons((__u16)ICMP_ECHOREPLY << 8 | ih->code));
	ih->type = ICMP_ECHOREPLY;
	nf_swap_mac(p->eth);
	return XDP_TX;
}

/* lb_pick returns the backend index for the flow, 0 if there is none. */
static __always_inline __u32 lb_pick(struct flow_key *fk, struct vip_meta *vm, __u8 tcp_syn)
{
#ifdef NO_CLOCK /* CEILING */
	__u64 now = 0;
#else
	__u64 now = bpf_ktime_get_ns();
#endif
	struct conn *ct;
	__u32 idx, *be;
	int use_lru = !(vm->flags & LB_F_LRU_BYPASS);

	if (use_lru && !tcp_syn) {
#ifdef NO_LRU /* CEILING */
		const struct oracle_slot2 *cs = oracle_find2(oracle_conns, ORACLE_CONNS_BITS,
							     ((__u64 *)fk)[0], ((__u64 *)fk)[1]);
		if (cs) {
			__u32 b = cs->a;
			struct backend *bk = BACKEND_LOOKUP(&b);
			if (bk && bk->addr) {
				lb_count(LB_STAT_CONN_HIT, 0);
				return b;
			}
		}
#endif
		ct = bpf_map_lookup_elem(&conns, fk);
		if (ct) {
			__u32 b = ct->backend;
			struct backend *bk = BACKEND_LOOKUP(&b);
			/* A backend removed since the flow started is re-picked. */
			if (bk && bk->addr) {
				ct->last_seen_ns = now;
				lb_count(LB_STAT_CONN_HIT, 0);
				return b;
			}
		}
	}
	if (vm->index >= LB_MAX_VIPS)
		return 0;
	__u32 ports = ((__u32)fk->sport << 16) | fk->dport;
	if (vm->flags & LB_F_HASH_NO_SRC_PORT)
		ports = fk->dport;
	__u32 h = lb_hash(fk->saddr, fk->daddr, ports, fk->proto);
	idx = vm->index * LB_RING_SIZE + h % LB_RING_SIZE;
	be = bpf_map_lookup_elem(&ring, &idx);
	if (!be || *be == 0)
		return 0;
	lb_count(LB_STAT_CONN_MISS, 0);
	if (use_lru) {
		struct conn nc = { .backend = *be, .last_seen_ns = now };
		bpf_map_update_elem(&conns, fk, &nc, BPF_ANY);
	}
	return *be;
}

/* lb_encap prepends an outer IPv4 header (IP-in-IP) after the L2 header,
 * keeping any VLAN tags, and addresses the frame to the gateway. */
static __always_inline int lb_encap(struct xdp_md *ctx, __u32 l3_off, __be32 dst,
				    __u8 tos, __u16 inner_len)
{
	__u8 l2[ETH_HLEN + 2 * sizeof(struct vlan_hdr)];
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (l3_off > sizeof(l2) || inner_len > 0xffff - sizeof(struct iphdr))
		return -1;
	/* The frame holds at least L2 + a 20-byte IPv4 header, so the first
	 * sizeof(l2) bytes always exist; copying a fixed size keeps this simple. */
	if (data + sizeof(l2) > data_end)
		return -1;
	__builtin_memcpy(l2, data, sizeof(l2));

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(l2) > data_end)
		return -1;
	/* Bytes past l3_off are overwritten by the outer header below. */
	__builtin_memcpy(data, l2, sizeof(l2));

	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_source, l2, ETH_ALEN);
	eth->h_dest[0] = gateway_mac[0];
	eth->h_dest[1] = gateway_mac[1];
	eth->h_dest[2] = gateway_mac[2];
	eth->h_dest[3] = gateway_mac[3];
	eth->h_dest[4] = gateway_mac[4];
	eth->h_dest[5] = gateway_mac[5];

	struct iphdr *outer = data + l3_off;
	if ((void *)(outer + 1) > data_end)
		return -1;
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = bpf_htons(0x4000); /* DF: backends must not reassemble */
	outer->ttl = LB_OUTER_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = local_ip;
	outer->daddr = dst;
	outer->check = nf_ipv4_csum(outer);
	return 0;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct nf_pkt p;

	if (nf_parse(&p, data, data_end) != NF_OK) {
		/* Truncated L2 or a broken IPv4 header: nobody can use it. */
		lb_count(LB_STAT_DROP_MALFORMED, bytes);
		return XDP_DROP;
	}
	if (p.l3_proto != ETH_P_IP || !p.ip4) {
		lb_count(LB_STAT_PASS, bytes);
		return XDP_PASS;
	}

	struct iphdr *ip = p.ip4;
	int frag = (bpf_ntohs(ip->frag_off) & (NF_IP_MF | NF_IP_OFFSET)) != 0;
	if (frag || p.l4_proto == IPPROTO_ICMP) {
		/* Only the destination address is known to matter here: look up
		 * the address entry (port 0, protocol 0) of the VIP address. */
		struct vip_key ak KEY_ALIGN = { .addr = ip->daddr };
		WIDE_VIP_KEY(ak, ip->daddr, 0, 0);
		if (!VIP_LOOKUP(&ak)) {
			lb_count(LB_STAT_PASS, bytes);
			return XDP_PASS;
		}
		if (frag) {
			lb_count(LB_STAT_DROP_FRAGMENT, bytes);
			return XDP_DROP;
		}
		int act = lb_icmp_echo(&p);
		lb_count(act == XDP_TX ? LB_STAT_ICMP_ECHO : LB_STAT_PASS, bytes);
		return act;
	}
	if (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP) {
		lb_count(LB_STAT_PASS, bytes);
		return XDP_PASS;
	}

	struct vip_key vk KEY_ALIGN = {
		.addr = ip->daddr,
		.port = p.dport,
		.proto = p.l4_proto,
	};
	WIDE_VIP_KEY(vk, ip->daddr, p.dport, p.l4_proto);
	struct vip_meta *vm = VIP_LOOKUP(&vk);
	if (!vm) {
		vk.port = 0; /* an all-ports VIP */
		WIDE_VIP_KEY(vk, ip->daddr, 0, p.l4_proto);
		vm = VIP_LOOKUP(&vk);
	}
	if (!vm) {
		lb_count(LB_STAT_PASS, bytes);
		return XDP_PASS;
	}

	__u8 syn = 0;
	if (p.l4_proto == IPPROTO_TCP) {
		struct tcphdr *th = p.l4;
		if ((void *)(th + 1) > data_end) {
			lb_count(LB_STAT_DROP_MALFORMED, bytes);
			return XDP_DROP;
		}
		syn = th->syn && !th->ack;
	}
	struct flow_key fk KEY_ALIGN = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.l4_proto,
	};
	WIDE_FLOW_KEY(fk, ip->saddr, ip->daddr, p.sport, p.dport, p.l4_proto);
	__u32 bi = lb_pick(&fk, vm, syn);
	struct backend *bk = bi ? BACKEND_LOOKUP(&bi) : 0;
	if (!bk || !bk->addr) {
		lb_count(LB_STAT_DROP_NO_BACKEND, bytes);
		return XDP_DROP;
	}
#ifndef NO_ENCAP /* CEILING */
	if (lb_encap(ctx, p.l3_off, bk->addr, ip->tos, bpf_ntohs(ip->tot_len))) {
		lb_count(LB_STAT_DROP_ENCAP, bytes);
		return XDP_DROP;
	}
#endif
	lb_count(LB_STAT_TX, bytes);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
