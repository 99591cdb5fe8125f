/* Service classifier: an XDP program and a TC program that map flows to
 * service classes through large switch statements (which clang may turn into
 * jump chains or lookup tables in .rodata), count per class in a per-CPU
 * array and re-mark the DSCP field. The TC program works only through
 * bpf_skb_load_bytes / bpf_skb_store_bytes / bpf_l3_csum_replace and sets
 * skb->mark and skb->priority.
 */
#include "corpus.h"

enum svc_class {
	CLS_BULK,
	CLS_WEB,
	CLS_DNS,
	CLS_SSH,
	CLS_MAIL,
	CLS_DB,
	CLS_VOICE,
	CLS_VIDEO,
	CLS_GAME,
	CLS_NTP,
	CLS_MGMT,
	CLS_ICMP,
	CLS_TUNNEL,
	CLS_UNKNOWN,
	CLS_MAX,
};

struct class_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLS_MAX);
	__type(key, __u32);
	__type(value, struct class_counter);
} class_stats SEC(".maps");

volatile const __u8 cfg_block_games = 1;
volatile const __u8 cfg_remark = 1;

__u64 classified_total;
__u64 dropped_total;

static __always_inline int port_class(__u16 port)
{
	switch (port) {
	case 80:
	case 443:
	case 8080:
	case 8443:
		return CLS_WEB;
	case 53:
	case 853:
		return CLS_DNS;
	case 22:
		return CLS_SSH;
	case 25:
	case 465:
	case 587:
	case 993:
	case 995:
		return CLS_MAIL;
	case 3306:
	case 5432:
	case 6379:
	case 27017:
		return CLS_DB;
	case 5060:
	case 5061:
		return CLS_VOICE;
	case 554:
	case 1935:
		return CLS_VIDEO;
	case 3074:
	case 27015:
		return CLS_GAME;
	case 123:
		return CLS_NTP;
	case 161:
	case 162:
	case 830:
		return CLS_MGMT;
	case 4789:
	case 6081:
		return CLS_TUNNEL;
	default:
		return -1;
	}
}

static __always_inline __u8 class_dscp(int cls)
{
	switch (cls) {
	case CLS_VOICE:
		return 46;
	case CLS_VIDEO:
		return 34;
	case CLS_GAME:
		return 36;
	case CLS_DNS:
	case CLS_NTP:
		return 26;
	case CLS_SSH:
	case CLS_MGMT:
		return 16;
	case CLS_WEB:
		return 18;
	case CLS_DB:
		return 20;
	case CLS_MAIL:
	case CLS_BULK:
		return 8;
	default:
		return 0;
	}
}

static __always_inline int l4_class(__u8 proto, __u16 sport, __u16 dport)
{
	int cls;

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		cls = port_class(dport);
		if (cls < 0)
			cls = port_class(sport);
		if (cls < 0)
			cls = (dport >= 1024 && sport >= 1024) ? CLS_BULK : CLS_UNKNOWN;
		return cls;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return CLS_ICMP;
	case IPPROTO_GRE:
	case IPPROTO_IPIP:
	case IPPROTO_IPV6:
		return CLS_TUNNEL;
	default:
		return CLS_UNKNOWN;
	}
}

static __always_inline void count_class(int cls, __u64 len)
{
	__u32 key = cls;
	struct class_counter *c = bpf_map_lookup_elem(&class_stats, &key);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)csum;
}

SEC("xdp")
int xdp_classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;
	__u8 l4proto;
	__u16 sport = 0, dport = 0;
	struct iphdr *ip4 = NULL;

	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		struct vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return XDP_DROP;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}

	switch (proto) {
	case bpf_htons(ETH_P_IP): {
		ip4 = data + off;
		if ((void *)(ip4 + 1) > data_end)
			return XDP_DROP;
		if (ip4->ihl != 5)
			return XDP_PASS;
		l4proto = ip4->protocol;
		off += sizeof(*ip4);
		break;
	}
	case bpf_htons(ETH_P_IPV6): {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		l4proto = ip6->nexthdr;
		off += sizeof(*ip6);
		break;
	}
	case bpf_htons(ETH_P_ARP):
		return XDP_PASS;
	default:
		count_class(CLS_UNKNOWN, data_end - data);
		return XDP_PASS;
	}

	if (l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP) {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end)
			return XDP_DROP;
		sport = bpf_ntohs(uh->source);
		dport = bpf_ntohs(uh->dest);
	}

	int cls = l4_class(l4proto, sport, dport);
	count_class(cls, data_end - data);
	__sync_fetch_and_add(&classified_total, 1);

	switch (cls) {
	case CLS_GAME:
		if (cfg_block_games) {
			__sync_fetch_and_add(&dropped_total, 1);
			return XDP_DROP;
		}
		break;
	case CLS_UNKNOWN:
		return XDP_PASS;
	case CLS_TUNNEL:
		return XDP_PASS;
	default:
		break;
	}

	if (ip4 && cfg_remark) {
		__u8 tos = class_dscp(cls) << 2 | (ip4->tos & 3);

		if (tos != ip4->tos) {
			__u16 old = *(__u16 *)ip4;
			ip4->tos = tos;
			__u32 csum = (__u16)~ip4->check;
			csum += (__u16)~old;
			csum += *(__u16 *)ip4;
			ip4->check = ~csum_fold(csum);
		}
	}
	return XDP_TX;
}

#define TC_IP_OFF ETH_HLEN
#define TC_TOS_OFF (TC_IP_OFF + offsetof(struct iphdr, tos))
#define TC_CSUM_OFF (TC_IP_OFF + offsetof(struct iphdr, check))

SEC("tc")
int tc_dscp_marker(struct __sk_buff *skb)
{
	struct iphdr ip;
	__be16 ports[2];
	__be16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)))
		return TC_ACT_OK;
	if (proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, TC_IP_OFF, &ip, sizeof(ip)))
		return TC_ACT_SHOT;
	if (ip.version != 4 || ip.ihl < 5)
		return TC_ACT_SHOT;

	__u16 sport = 0, dport = 0;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, TC_IP_OFF + ip.ihl * 4, ports, sizeof(ports)) == 0) {
			sport = bpf_ntohs(ports[0]);
			dport = bpf_ntohs(ports[1]);
		}
	}
	int cls = l4_class(ip.protocol, sport, dport);
	count_class(cls, skb->len);

	skb->mark = 0x4d500000 | cls;
	switch (cls) {
	case CLS_VOICE:
	case CLS_VIDEO:
		skb->priority = 6;
		break;
	case CLS_DNS:
	case CLS_NTP:
	case CLS_MGMT:
		skb->priority = 4;
		break;
	case CLS_BULK:
		skb->priority = 1;
		break;
	case CLS_GAME:
		if (cfg_block_games)
			return TC_ACT_SHOT;
		skb->priority = 5;
		break;
	default:
		skb->priority = 0;
	}

	__u8 tos = class_dscp(cls) << 2 | (ip.tos & 3);
	if (tos != ip.tos) {
		__u16 old = *(__u16 *)&ip;
		ip.tos = tos;
		__u16 new = *(__u16 *)&ip;

		if (bpf_l3_csum_replace(skb, TC_CSUM_OFF, old, new, sizeof(__u16)))
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, TC_TOS_OFF, &tos, sizeof(tos), 0))
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
