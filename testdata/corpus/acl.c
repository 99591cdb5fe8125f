/* Stateless firewall in one large function.
 *
 * Everything is __always_inline, so the program is a single function of well
 * over a thousand instructions: an unrolled VLAN and IPv6 extension header
 * walk, an unrolled TCP option parser that clamps the MSS (rewriting the
 * packet and its checksum), a hash over the flow, and a first-match scan over
 * 16 rules read from an ARRAY map, unrolled, with per-rule hit counters in a
 * per-CPU hash.
 */
#include "corpus.h"

#define ACL_RULES 16
#define MAX_TCP_OPTS 8
#define MAX_EXT_HDRS 4

struct acl_rule {
	__be32 src;
	__be32 src_mask;
	__be32 dst;
	__be32 dst_mask;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 proto; /* 0 = any */
	__u8 action; /* 0 pass, 1 drop, 2 tx */
	__u8 enabled;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ACL_RULES);
	__type(key, __u32);
	__type(value, struct acl_rule);
} acl_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, ACL_RULES + 1);
	__type(key, __u32);
	__type(value, __u64);
} acl_hits SEC(".maps");

volatile const __u16 cfg_mss_clamp = 1360;
volatile const __u8 cfg_default_action = 0;

__u32 last_flow_hash;

struct flow {
	__be32 saddr;
	__be32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
};

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51;
	v = (v << 15) | (v >> 17);
	v *= 0x1b873593;
	h ^= v;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct flow *f)
{
	__u32 h = 0x9747b28c;

	h = mix(h, f->saddr);
	h = mix(h, f->daddr);
	h = mix(h, ((__u32)f->sport << 16) | f->dport);
	h = mix(h, f->proto);
	h ^= 17;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline void count_hit(__u32 rule)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(&acl_hits, &rule);

	if (v)
		*v += 1;
	else
		bpf_map_update_elem(&acl_hits, &rule, &one, BPF_NOEXIST);
}

static __always_inline int rule_matches(const struct acl_rule *r, const struct flow *f)
{
	if (!r->enabled)
		return 0;
	if (r->proto && r->proto != f->proto)
		return 0;
	if ((f->saddr & r->src_mask) != (r->src & r->src_mask))
		return 0;
	if ((f->daddr & r->dst_mask) != (r->dst & r->dst_mask))
		return 0;
	if (r->dport_hi && (f->dport < r->dport_lo || f->dport > r->dport_hi))
		return 0;
	return 1;
}

static __always_inline void csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	__u32 c = (__u16)~*sum;

	c += (__u16)~old;
	c += new;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	*sum = ~c;
}

SEC("xdp")
int xdp_acl(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct flow f = {};
	void *l4 = NULL;
	__be16 proto;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vlan_hdr *vh = data + off;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return XDP_DROP;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		if (ip->ihl < 5)
			return XDP_DROP;
		f.saddr = ip->saddr;
		f.daddr = ip->daddr;
		f.proto = ip->protocol;
		if (ip->frag_off & bpf_htons(0x1fff))
			goto classify;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		__u8 nh;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		f.saddr = ip6->saddr.s6_addr32[0] ^ ip6->saddr.s6_addr32[1] ^
			  ip6->saddr.s6_addr32[2] ^ ip6->saddr.s6_addr32[3];
		f.daddr = ip6->daddr.s6_addr32[0] ^ ip6->daddr.s6_addr32[1] ^
			  ip6->daddr.s6_addr32[2] ^ ip6->daddr.s6_addr32[3];
		nh = ip6->nexthdr;
		l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < MAX_EXT_HDRS; i++) {
			__u8 *ext = l4;

			if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING &&
			    nh != IPPROTO_DSTOPTS && nh != IPPROTO_FRAGMENT)
				break;
			if ((void *)(ext + 8) > data_end)
				return XDP_DROP;
			if (nh == IPPROTO_FRAGMENT) {
				nh = ext[0];
				l4 = ext + 8;
				continue;
			}
			nh = ext[0];
			l4 = ext + (ext[1] + 1) * 8;
		}
		f.proto = nh;
	} else {
		return XDP_PASS;
	}

	if (f.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return XDP_DROP;
		f.sport = bpf_ntohs(uh->source);
		f.dport = bpf_ntohs(uh->dest);
	} else if (f.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return XDP_DROP;
		f.sport = bpf_ntohs(th->source);
		f.dport = bpf_ntohs(th->dest);

		if (th->syn && th->doff > 5) {
			__u8 *opt = (void *)(th + 1);
			__u8 *end = (void *)th + th->doff * 4;

#pragma unroll
			for (int i = 0; i < MAX_TCP_OPTS; i++) {
				if ((void *)(opt + 1) > data_end || opt >= end)
					break;
				if (opt[0] == TCPOPT_EOL)
					break;
				if (opt[0] == TCPOPT_NOP) {
					opt++;
					continue;
				}
				if ((void *)(opt + 2) > data_end)
					break;
				__u8 olen = opt[1];
				if (olen < 2)
					break;
				if (opt[0] == TCPOPT_MSS && olen == 4) {
					__u16 *mssp = (void *)(opt + 2);

					if ((void *)(mssp + 1) > data_end)
						break;
					__u16 mss = bpf_ntohs(*mssp);
					if (mss > cfg_mss_clamp) {
						__u16 old = *mssp;
						__u16 new = bpf_htons(cfg_mss_clamp);

						*mssp = new;
						csum_replace2(&th->check, old, new);
					}
				}
				opt += olen;
			}
		}
	} else if (f.proto == IPPROTO_ICMP || f.proto == IPPROTO_ICMPV6) {
		__u8 *ih = l4;

		if ((void *)(ih + 2) > data_end)
			return XDP_DROP;
		f.dport = ih[0] << 8 | ih[1];
	}

classify:
	last_flow_hash = flow_hash(&f);

	int action = cfg_default_action;
	__u32 hit = ACL_RULES;
#pragma unroll
	for (__u32 i = 0; i < ACL_RULES; i++) {
		__u32 key = i;
		struct acl_rule *r = bpf_map_lookup_elem(&acl_rules, &key);

		if (r && rule_matches(r, &f)) {
			action = r->action;
			hit = i;
			break;
		}
	}
	count_hit(hit);

	switch (action) {
	case 0:
		return XDP_PASS;
	case 1:
		return XDP_DROP;
	case 2: {
		__u8 tmp[ETH_ALEN];

		__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
		return XDP_TX;
	}
	default:
		return XDP_ABORTED;
	}
}

char LICENSE[] SEC("license") = "GPL";
