/* Shared packet parsing and checksum helpers for the sample network functions.
 *
 * Every parser checks bounds against data_end before touching a header, so the
 * verifier accepts it and malformed packets (truncated headers, bad IHL) are
 * reported as errors instead of being read past their end.
 */
#ifndef MORPHEUS_NF_H
#define MORPHEUS_NF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define NF_MAX_VLAN_DEPTH 2

/* IPv4 fragment bits in frag_off (host order after bpf_ntohs). */
#define NF_IP_MF 0x2000
#define NF_IP_OFFSET 0x1FFF

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* A parsed packet: pointers stay valid while data/data_end do not change. */
struct nf_pkt {
	void *data;
	void *data_end;
	struct ethhdr *eth;
	__u16 vlan_id;      /* outermost VLAN id, 0 if untagged */
	__u16 l3_proto;     /* host order EtherType after VLAN tags */
	__u16 l3_off;       /* offset of the L3 header from data */
	struct iphdr *ip4;  /* set when l3_proto == ETH_P_IP and the header is valid */
	struct ipv6hdr *ip6;
	__u8 l4_proto;
	__u8 is_fragment;   /* non-first fragment: no L4 header available */
	void *l4;           /* L4 header, bounds-checked for its fixed part */
	__u16 sport;        /* network order, 0 when not TCP/UDP */
	__u16 dport;
};

enum nf_parse_err {
	NF_OK = 0,
	NF_ERR_TRUNCATED = 1,
	NF_ERR_BAD_IP = 2,
};

static __always_inline int nf_parse_eth(struct nf_pkt *p)
{
	struct ethhdr *eth = p->data;
	if ((void *)(eth + 1) > p->data_end)
		return NF_ERR_TRUNCATED;
	p->eth = eth;
	__u16 proto = bpf_ntohs(eth->h_proto);
	__u16 off = sizeof(*eth);
	p->vlan_id = 0;
#pragma unroll
	for (int i = 0; i < NF_MAX_VLAN_DEPTH; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		struct vlan_hdr *vh = p->data + off;
		if ((void *)(vh + 1) > p->data_end)
			return NF_ERR_TRUNCATED;
		if (i == 0)
			p->vlan_id = bpf_ntohs(vh->tci) & 0x0FFF;
		proto = bpf_ntohs(vh->encap_proto);
		off += sizeof(*vh);
	}
	p->l3_proto = proto;
	p->l3_off = off;
	return NF_OK;
}

/* nf_parse_l4 fills ports for TCP/UDP and checks the fixed L4 header. */
static __always_inline int nf_parse_l4(struct nf_pkt *p, void *l4, __u8 proto)
{
	p->l4_proto = proto;
	p->l4 = l4;
	p->sport = 0;
	p->dport = 0;
	if (p->is_fragment)
		return NF_OK;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > p->data_end)
			return NF_ERR_TRUNCATED;
		p->sport = th->source;
		p->dport = th->dest;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > p->data_end)
			return NF_ERR_TRUNCATED;
		p->sport = uh->source;
		p->dport = uh->dest;
	} else if (proto == IPPROTO_ICMP) {
		struct icmphdr *ih = l4;
		if ((void *)(ih + 1) > p->data_end)
			return NF_ERR_TRUNCATED;
	}
	return NF_OK;
}

/* nf_parse_ipv4 validates version, IHL (options allowed) and total length. */
static __always_inline int nf_parse_ipv4(struct nf_pkt *p)
{
	struct iphdr *ip = p->data + p->l3_off;
	if ((void *)(ip + 1) > p->data_end)
		return NF_ERR_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return NF_ERR_BAD_IP;
	__u32 hlen = ip->ihl * 4;
	if ((void *)ip + hlen > p->data_end)
		return NF_ERR_TRUNCATED;
	if (bpf_ntohs(ip->tot_len) < hlen)
		return NF_ERR_BAD_IP;
	p->ip4 = ip;
	p->ip6 = 0;
	p->is_fragment = (bpf_ntohs(ip->frag_off) & NF_IP_OFFSET) != 0;
	return nf_parse_l4(p, (void *)ip + hlen, ip->protocol);
}

/* nf_parse_ipv6 handles the fixed header; extension headers are not walked,
 * so their next-header value is reported as the L4 protocol. */
static __always_inline int nf_parse_ipv6(struct nf_pkt *p)
{
	struct ipv6hdr *ip6 = p->data + p->l3_off;
	if ((void *)(ip6 + 1) > p->data_end)
		return NF_ERR_TRUNCATED;
	if (ip6->version != 6)
		return NF_ERR_BAD_IP;
	p->ip6 = ip6;
	p->ip4 = 0;
	p->is_fragment = 0;
	return nf_parse_l4(p, ip6 + 1, ip6->nexthdr);
}

/* nf_parse parses L2, then L3/L4 for IPv4 and IPv6. */
static __always_inline int nf_parse(struct nf_pkt *p, void *data, void *data_end)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->data = data;
	p->data_end = data_end;
	int err = nf_parse_eth(p);
	if (err)
		return err;
	if (p->l3_proto == ETH_P_IP)
		return nf_parse_ipv4(p);
	if (p->l3_proto == ETH_P_IPV6)
		return nf_parse_ipv6(p);
	return NF_OK;
}

static __always_inline __u16 nf_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* nf_csum_replace2 updates a checksum for a 16-bit field change (RFC 1624). */
static __always_inline void nf_csum_replace2(__sum16 *csum, __be16 old, __be16 new)
{
	__u32 sum = ~bpf_ntohs(*csum) & 0xffff;
	sum += ~bpf_ntohs(old) & 0xffff;
	sum += bpf_ntohs(new);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	*csum = bpf_htons(~sum & 0xffff);
}

/* nf_ipv4_decrease_ttl decrements the TTL and patches the header checksum. */
static __always_inline void nf_ipv4_decrease_ttl(struct iphdr *ip)
{
	__be16 old = *(__be16 *)&ip->ttl;
	ip->ttl--;
	nf_csum_replace2(&ip->check, old, *(__be16 *)&ip->ttl);
}

/* nf_ipv4_csum computes the checksum of a 20-byte header (no options). */
static __always_inline __u16 nf_ipv4_csum(struct iphdr *ip)
{
	__u64 sum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return nf_csum_fold(sum);
}

static __always_inline void nf_swap_mac(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}


/* ---- 802.1Q tag push/pop (XDP). ----
 * Both move the two MAC addresses and resize the head with
 * bpf_xdp_adjust_head, so every packet pointer taken before the call is
 * invalid afterwards: re-derive them from ctx. They return 0 on success and
 * -1 when the frame is too short or the head cannot be resized. */

/* nf_vlan_pop removes the outermost VLAN tag of a tagged frame. */
static __always_inline int nf_vlan_pop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[2 * ETH_ALEN];

	if (data + sizeof(struct ethhdr) + sizeof(struct vlan_hdr) > data_end)
		return -1;
	__builtin_memcpy(macs, data, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct vlan_hdr)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(struct ethhdr) > data_end)
		return -1;
	/* The encapsulated EtherType now sits where h_proto belongs. */
	__builtin_memcpy(data, macs, sizeof(macs));
	return 0;
}

/* nf_vlan_push inserts an 802.1Q tag with the given TCI (host order) in
 * front of the current EtherType. */
static __always_inline int nf_vlan_push(struct xdp_md *ctx, __u16 tci)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[2 * ETH_ALEN];
	__be16 proto;

	if (data + sizeof(struct ethhdr) > data_end)
		return -1;
	__builtin_memcpy(macs, data, sizeof(macs));
	proto = ((struct ethhdr *)data)->h_proto;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct vlan_hdr)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vlan_hdr *vh = (void *)(eth + 1);
	if ((void *)(vh + 1) > data_end)
		return -1;
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = bpf_htons(ETH_P_8021Q);
	vh->tci = bpf_htons(tci);
	vh->encap_proto = proto;
	return 0;
}

/* nf_vlan_set_vid rewrites the VLAN id of the outermost tag, keeping the
 * priority and DEI bits. */
static __always_inline int nf_vlan_set_vid(void *data, void *data_end, __u16 vid)
{
	struct vlan_hdr *vh = data + sizeof(struct ethhdr);
	if ((void *)(vh + 1) > data_end)
		return -1;
	vh->tci = bpf_htons((bpf_ntohs(vh->tci) & 0xF000) | (vid & 0x0FFF));
	return 0;
}

/* nf_mac_is_multicast is true for group addresses (broadcast included). */
static __always_inline int nf_mac_is_multicast(const __u8 *mac)
{
	return mac[0] & 1;
}

/* nf_mac_is_zero is true for 00:00:00:00:00:00. */
static __always_inline int nf_mac_is_zero(const __u8 *mac)
{
	return (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0;
}


/* nf_mac_equal compares two MAC addresses (clang does not expand
 * __builtin_memcmp for BPF, and BPF has no memcmp to call). */
static __always_inline int nf_mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

#endif
