// SPDX-License-Identifier: GPL-2.0
/* firewall: a stateless + stateful IPv4 ACL (iptables-like) in three XDP
 * programs chained by tail calls through the stages program array:
 *
 *   xdp_firewall   parses, settles non-IP / IPv6 / malformed packets, then
 *                  tail-calls the conntrack stage (stateful on) or the ACL.
 *   fw_conntrack   lets packets of a tracked connection through, in either
 *                  direction; otherwise tail-calls the ACL.
 *   fw_acl         evaluates the rules, first match wins:
 *                    1. exact 5-tuple rules (rules hash)
 *                    2. source prefix rules (src_lpm, longest prefix)
 *                    3. destination prefix rules (dst_lpm, longest prefix)
 *                    4. the default policy (.rodata default_action)
 *                  and, when stateful, records allowed flows in ct.
 *
 * Each stage is enabled at run time by the features array; a disabled stage
 * is skipped. Non-first IPv4 fragments carry no ports: they skip conntrack
 * and the exact rules and are judged by the prefix rules and the default.
 * IPv6 gets the default policy; non-IP traffic (ARP, LLDP...) always passes;
 * malformed IPv4 is dropped. If a tail call fails the packet is dropped
 * (fail closed).
 */
#include "nf.h"

#define FW_MAX_RULES 4096
#define FW_MAX_PREFIXES 16384
#define FW_MAX_CT 65536

enum fw_feature {
	FW_FEAT_STATEFUL = 0,
	FW_FEAT_RULES = 1,
	FW_FEAT_SRC_LPM = 2,
	FW_FEAT_DST_LPM = 3,
	FW_FEAT_COUNTERS = 4,
	FW_FEAT_MAX = 5,
};

enum fw_action {
	FW_ACT_NONE = 0,
	FW_ACT_ALLOW = 1,
	FW_ACT_DENY = 2,
};

enum fw_stage {
	FW_STAGE_CT = 0,
	FW_STAGE_ACL = 1,
	FW_STAGE_MAX = 2,
};

enum fw_counter_idx {
	FW_CNT_CT_ALLOW = 0,
	FW_CNT_RULE_ALLOW = 1,
	FW_CNT_RULE_DENY = 2,
	FW_CNT_SRC_ALLOW = 3,
	FW_CNT_SRC_DENY = 4,
	FW_CNT_DST_ALLOW = 5,
	FW_CNT_DST_DENY = 6,
	FW_CNT_DEFAULT_ALLOW = 7,
	FW_CNT_DEFAULT_DENY = 8,
	FW_CNT_NON_IP = 9,
	FW_CNT_MALFORMED = 10,
	FW_CNT_TAIL_CALL_FAIL = 11,
	FW_CNT_CT_NEW = 12,
	FW_CNT_MAX = 13,
};

struct fw_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct fw_verdict {
	__u32 action;  /* enum fw_action */
	__u32 rule_id; /* reported back in ct entries */
};

struct fw_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct fw_ct_entry {
	__u64 last_seen_ns;
	__u64 packets;
	__u32 rule_id;
	__u32 pad;
};

struct fw_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_FEAT_MAX);
	__type(key, __u32);
	__type(value, __u32);
} features SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_MAX_RULES);
	__type(key, struct fw_tuple);
	__type(value, struct fw_verdict);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_lpm_key);
	__type(value, struct fw_verdict);
} src_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_lpm_key);
	__type(value, struct fw_verdict);
} dst_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FW_MAX_CT);
	__type(key, struct fw_tuple);
	__type(value, struct fw_ct_entry);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_CNT_MAX);
	__type(key, __u32);
	__type(value, struct fw_counter);
} counters SEC(".maps");

int fw_conntrack(struct xdp_md *ctx);
int fw_acl(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, FW_STAGE_MAX);
	__type(key, __u32);
	__array(values, int(void *));
} stages SEC(".maps") = {
	.values = {
		[FW_STAGE_CT] = (void *)&fw_conntrack,
		[FW_STAGE_ACL] = (void *)&fw_acl,
	},
};

/* Policy for packets no rule matches (and for IPv6), and the idle time
 * after which a tracked connection is forgotten. Set before load. */
volatile const __u32 default_action = FW_ACT_DENY;
volatile const __u64 ct_timeout_ns = 300ULL * 1000000000ULL;

static __always_inline int fw_enabled(__u32 feature)
{
	__u32 *on = bpf_map_lookup_elem(&features, &feature);
	return on && *on;
}

static __always_inline void fw_count(__u32 idx, __u64 bytes)
{
	if (!fw_enabled(FW_FEAT_COUNTERS))
		return;
	struct fw_counter *c = bpf_map_lookup_elem(&counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline int fw_is_fragment(struct nf_pkt *p)
{
	return p->is_fragment;
}

static __always_inline void fw_tuple_of(struct nf_pkt *p, struct fw_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->saddr = p->ip4->saddr;
	t->daddr = p->ip4->daddr;
	t->sport = p->sport;
	t->dport = p->dport;
	t->proto = p->l4_proto;
}

/* fw_parse re-parses the frame in a stage (tail calls keep no stack) and
 * reports whether it is the IPv4 packet the entry program accepted. */
static __always_inline int fw_parse(struct xdp_md *ctx, struct nf_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	return nf_parse(p, data, data_end) == NF_OK && p->ip4;
}

/* fw_evaluate runs the rule tables in priority order and returns the
 * counter index of the decision; *action and *rule_id receive it. */
static __noinline __u32 fw_evaluate(struct fw_tuple *t, __u32 frag, __u32 *action, __u32 *rule_id)
{
	struct fw_verdict *v;

	if (!frag && fw_enabled(FW_FEAT_RULES)) {
		v = bpf_map_lookup_elem(&rules, t);
		if (v && v->action != FW_ACT_NONE) {
			*action = v->action;
			*rule_id = v->rule_id;
			return v->action == FW_ACT_ALLOW ? FW_CNT_RULE_ALLOW : FW_CNT_RULE_DENY;
		}
	}
	if (fw_enabled(FW_FEAT_SRC_LPM)) {
		struct fw_lpm_key k = { .prefixlen = 32, .addr = t->saddr };
		v = bpf_map_lookup_elem(&src_lpm, &k);
		if (v && v->action != FW_ACT_NONE) {
			*action = v->action;
			*rule_id = v->rule_id;
			return v->action == FW_ACT_ALLOW ? FW_CNT_SRC_ALLOW : FW_CNT_SRC_DENY;
		}
	}
	if (fw_enabled(FW_FEAT_DST_LPM)) {
		struct fw_lpm_key k = { .prefixlen = 32, .addr = t->daddr };
		v = bpf_map_lookup_elem(&dst_lpm, &k);
		if (v && v->action != FW_ACT_NONE) {
			*action = v->action;
			*rule_id = v->rule_id;
			return v->action == FW_ACT_ALLOW ? FW_CNT_DST_ALLOW : FW_CNT_DST_DENY;
		}
	}
	*action = default_action == FW_ACT_ALLOW ? FW_ACT_ALLOW : FW_ACT_DENY;
	*rule_id = 0;
	return *action == FW_ACT_ALLOW ? FW_CNT_DEFAULT_ALLOW : FW_CNT_DEFAULT_DENY;
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct nf_pkt p;

	if (nf_parse(&p, data, data_end) != NF_OK) {
		fw_count(FW_CNT_MALFORMED, bytes);
		return XDP_DROP;
	}
	if (p.l3_proto == ETH_P_IPV6) {
		int allow = default_action == FW_ACT_ALLOW;
		fw_count(allow ? FW_CNT_DEFAULT_ALLOW : FW_CNT_DEFAULT_DENY, bytes);
		return allow ? XDP_PASS : XDP_DROP;
	}
	if (p.l3_proto != ETH_P_IP || !p.ip4) {
		fw_count(FW_CNT_NON_IP, bytes);
		return XDP_PASS;
	}
	if (!fw_is_fragment(&p) && fw_enabled(FW_FEAT_STATEFUL))
		bpf_tail_call(ctx, &stages, FW_STAGE_CT);
	bpf_tail_call(ctx, &stages, FW_STAGE_ACL);
	fw_count(FW_CNT_TAIL_CALL_FAIL, bytes);
	return XDP_DROP;
}

/* fw_ct_hit refreshes a live entry; an idle one is deleted and missed. */
static __always_inline int fw_ct_hit(struct fw_tuple *t, __u64 now)
{
	struct fw_ct_entry *e = bpf_map_lookup_elem(&ct, t);
	if (!e)
		return 0;
	if (now - e->last_seen_ns > ct_timeout_ns) {
		bpf_map_delete_elem(&ct, t);
		return 0;
	}
	e->last_seen_ns = now;
	__sync_fetch_and_add(&e->packets, 1);
	return 1;
}

SEC("xdp")
int fw_conntrack(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	__u64 now = bpf_ktime_get_ns();
	struct fw_tuple t, r;
	struct nf_pkt p;

	if (!fw_parse(ctx, &p)) {
		fw_count(FW_CNT_MALFORMED, bytes);
		return XDP_DROP;
	}
	fw_tuple_of(&p, &t);
	/* The entry is keyed by the originator's direction; replies match
	 * the reversed tuple. */
	__builtin_memset(&r, 0, sizeof(r));
	r.saddr = t.daddr;
	r.daddr = t.saddr;
	r.sport = t.dport;
	r.dport = t.sport;
	r.proto = t.proto;
	struct fw_tuple *hit = 0;
	if (fw_ct_hit(&t, now))
		hit = &t;
	else if (fw_ct_hit(&r, now))
		hit = &r;
	if (hit) {
		/* A reset ends the connection: later packets meet the rules. */
		if (p.l4_proto == IPPROTO_TCP) {
			struct tcphdr *th = p.l4;
			if ((void *)(th + 1) <= (void *)(long)ctx->data_end && th->rst)
				bpf_map_delete_elem(&ct, hit);
		}
		fw_count(FW_CNT_CT_ALLOW, bytes);
		return XDP_PASS;
	}
	bpf_tail_call(ctx, &stages, FW_STAGE_ACL);
	fw_count(FW_CNT_TAIL_CALL_FAIL, bytes);
	return XDP_DROP;
}

SEC("xdp")
int fw_acl(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	struct fw_tuple t;
	struct nf_pkt p;
	__u32 action = FW_ACT_DENY, rule_id = 0;

	if (!fw_parse(ctx, &p)) {
		fw_count(FW_CNT_MALFORMED, bytes);
		return XDP_DROP;
	}
	fw_tuple_of(&p, &t);
	__u32 frag = fw_is_fragment(&p);
	__u32 cnt = fw_evaluate(&t, frag, &action, &rule_id);
	fw_count(cnt, bytes);
	if (action != FW_ACT_ALLOW)
		return XDP_DROP;
	if (!frag && fw_enabled(FW_FEAT_STATEFUL)) {
		struct fw_ct_entry e = {
			.last_seen_ns = bpf_ktime_get_ns(),
			.packets = 1,
			.rule_id = rule_id,
		};
		if (bpf_map_update_elem(&ct, &t, &e, BPF_ANY) == 0)
			fw_count(FW_CNT_CT_NEW, 0);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
