/* Stateful connection tracker.
 *
 * Written as a chain of small __noinline helpers, as some projects do to keep
 * verifier complexity down: parsing, key building, the TCP state machine and
 * the policy check are separate BPF-to-BPF functions, nested several levels
 * deep, that receive pointers into their caller's stack. Connections live in
 * an LRU hash with a last-seen timestamp from bpf_ktime_get_ns(); new
 * connections are admitted by a port policy hash. A tracepoint program shares
 * the statistics map (it cannot be test-run, but it must load).
 */
#include "corpus.h"

struct pkt_info {
	__u32 len;
	__u16 l3_off;
	__u16 l4_off;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 ip_proto;
	__u8 tcp_flags;
	__u16 pad;
};

struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_entry {
	__u64 last_seen;
	__u64 packets;
	__u64 bytes;
	__u8 state;
	__u8 reply_seen;
	__u16 pad;
	__u32 policy_id;
};

struct policy_key {
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct policy {
	__u32 action; /* 0 allow, 1 deny, 2 allow without tracking */
	__u32 id;
};

enum ct_state {
	CT_NONE,
	CT_SYN_SENT,
	CT_SYN_RECV,
	CT_ESTABLISHED,
	CT_FIN_WAIT,
	CT_CLOSE_WAIT,
	CT_CLOSED,
	CT_UDP,
	CT_ICMP,
};

enum ct_stat {
	ST_PARSE_FAIL,
	ST_NOT_IP,
	ST_NEW,
	ST_HIT,
	ST_REPLY,
	ST_DENIED,
	ST_INVALID,
	ST_GETPID,
	ST_MAX,
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct policy_key);
	__type(value, struct policy);
} port_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ct_stats SEC(".maps");

volatile const __u8 cfg_default_allow = 1;

static __noinline int bump(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ct_stats, &idx);

	if (!v)
		return 0;
	__sync_fetch_and_add(v, 1);
	return 1;
}

static __noinline int parse_l4(struct xdp_md *ctx, struct pkt_info *pi)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 off = pi->l4_off;

	if (off > 256)
		return -1;
	switch (pi->ip_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + off;

		if ((void *)(th + 1) > data_end)
			return -1;
		pi->sport = th->source;
		pi->dport = th->dest;
		pi->tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end)
			return -1;
		pi->sport = uh->source;
		pi->dport = uh->dest;
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return -1;
		pi->sport = ih->un.echo.id;
		pi->dport = bpf_htons(ih->type);
		return 0;
	}
	default:
		return 0;
	}
}

static __noinline int parse_l3(struct xdp_md *ctx, struct pkt_info *pi)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + pi->l3_off;

	if (pi->l3_off > 64)
		return -1;
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	pi->saddr = ip->saddr;
	pi->daddr = ip->daddr;
	pi->ip_proto = ip->protocol;
	pi->l4_off = pi->l3_off + ip->ihl * 4;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	return parse_l4(ctx, pi);
}

static __noinline int parse_l2(struct xdp_md *ctx, struct pkt_info *pi)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	pi->len = data_end - data;
	pi->l3_off = sizeof(*eth);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->encap_proto;
		pi->l3_off += sizeof(*vh);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return 1;
	return parse_l3(ctx, pi);
}

static __noinline int make_key(const struct pkt_info *pi, struct flow_key *k, int reply)
{
	if (reply) {
		k->saddr = pi->daddr;
		k->daddr = pi->saddr;
		k->sport = pi->dport;
		k->dport = pi->sport;
	} else {
		k->saddr = pi->saddr;
		k->daddr = pi->daddr;
		k->sport = pi->sport;
		k->dport = pi->dport;
	}
	k->proto = pi->ip_proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	return 0;
}

static __noinline int next_state(int state, int flags, int reply)
{
	if (flags & TCPF_RST)
		return CT_CLOSED;
	switch (state) {
	case CT_NONE:
		return (flags & TCPF_SYN) && !(flags & TCPF_ACK) ? CT_SYN_SENT : -1;
	case CT_SYN_SENT:
		if (reply && (flags & TCPF_SYN) && (flags & TCPF_ACK))
			return CT_SYN_RECV;
		return CT_SYN_SENT;
	case CT_SYN_RECV:
		if (!reply && (flags & TCPF_ACK))
			return CT_ESTABLISHED;
		return CT_SYN_RECV;
	case CT_ESTABLISHED:
		if (flags & TCPF_FIN)
			return reply ? CT_CLOSE_WAIT : CT_FIN_WAIT;
		return CT_ESTABLISHED;
	case CT_FIN_WAIT:
	case CT_CLOSE_WAIT:
		if (flags & TCPF_FIN)
			return CT_CLOSED;
		return state;
	case CT_CLOSED:
		return (flags & TCPF_SYN) ? CT_SYN_SENT : CT_CLOSED;
	default:
		return -1;
	}
}

static __noinline int policy_verdict(const struct pkt_info *pi, __u32 *policy_id)
{
	struct policy_key pk = { .port = pi->dport, .proto = pi->ip_proto };
	struct policy *p = bpf_map_lookup_elem(&port_policy, &pk);

	if (!p) {
		*policy_id = 0;
		return cfg_default_allow ? 0 : 1;
	}
	*policy_id = p->id;
	return p->action;
}

static __noinline int ct_create(const struct pkt_info *pi, struct flow_key *k)
{
	struct ct_entry e = {};
	int action;

	action = policy_verdict(pi, &e.policy_id);
	if (action == 1) {
		bump(ST_DENIED);
		return XDP_DROP;
	}
	if (action == 2)
		return XDP_PASS;
	if (pi->ip_proto == IPPROTO_TCP) {
		int st = next_state(CT_NONE, pi->tcp_flags, 0);

		if (st < 0) {
			bump(ST_INVALID);
			return XDP_DROP;
		}
		e.state = st;
	} else {
		e.state = pi->ip_proto == IPPROTO_ICMP ? CT_ICMP : CT_UDP;
	}
	e.last_seen = bpf_ktime_get_ns();
	e.packets = 1;
	e.bytes = pi->len;
	bpf_map_update_elem(&conntrack, k, &e, BPF_NOEXIST);
	bump(ST_NEW);
	return XDP_PASS;
}

static __noinline int ct_track(const struct pkt_info *pi)
{
	struct flow_key k;
	struct ct_entry *e;
	int reply = 0;

	make_key(pi, &k, 0);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (!e) {
		make_key(pi, &k, 1);
		e = bpf_map_lookup_elem(&conntrack, &k);
		if (!e) {
			make_key(pi, &k, 0);
			return ct_create(pi, &k);
		}
		reply = 1;
		e->reply_seen = 1;
		bump(ST_REPLY);
	} else {
		bump(ST_HIT);
	}
	e->last_seen = bpf_ktime_get_ns();
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, pi->len);
	if (pi->ip_proto == IPPROTO_TCP) {
		int st = next_state(e->state, pi->tcp_flags, reply);

		if (st < 0) {
			bump(ST_INVALID);
			return XDP_DROP;
		}
		e->state = st;
		if (st == CT_CLOSED)
			bpf_map_delete_elem(&conntrack, &k);
	}
	return XDP_PASS;
}

SEC("xdp")
int xdp_conntrack(struct xdp_md *ctx)
{
	struct pkt_info pi = {};
	int ret = parse_l2(ctx, &pi);

	if (ret < 0) {
		bump(ST_PARSE_FAIL);
		return XDP_DROP;
	}
	if (ret > 0) {
		bump(ST_NOT_IP);
		return XDP_PASS;
	}
	return ct_track(&pi);
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int tp_count_getpid(void *ctx)
{
	bump(ST_GETPID);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
