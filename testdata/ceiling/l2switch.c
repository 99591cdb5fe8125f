// SPDX-License-Identifier: GPL-2.0
/* Ceiling experiment: variants of the l2switch NF (nf/l2switch/bpf/l2switch.c,
 * copied below with the knobs marked CEILING), for `morpheus bench --against`.
 * Each build defines at most a few of:
 *
 *   NO_CLOCK     no bpf_ktime_get_ns(): now = 0, aging and refresh checks off
 *   NO_STATS     no per-CPU stats lookups (and so no counter updates)
 *   NO_LEARN     no source learning (fdb_learn: its lookup and checks)
 *   NO_FORWARD   everything after learning floods: no destination lookup,
 *                egress port lookup, tagging, egress counters or redirect
 *   NO_TAGGING   no egress tagging (no VLAN push, pop or rewrite)
 *   FREE_PORTS   ports lookups answered by compiled-in code (oracle_port)
 *   FREE_VLANS   the vlans lookup answered by compiled-in code (oracle_vlan)
 *   FREE_SRC     the source lookup of learning answered by the compiled-in
 *                FDB table; a known source on its port skips fdb_learn
 *   FREE_DST     the destination lookup answered by the compiled-in FDB
 *                table (static entries; a dynamic one takes the map lookup)
 *   ORACLE       FREE_PORTS + FREE_VLANS + FREE_SRC + FREE_DST
 *   WIDE_KEYS    no lookup removed: the FDB key is written to the stack as
 *                one 64-bit word instead of field by field, so the helper's
 *                hash reads it without a store-forwarding stall (an exact
 *                bytecode rewrite: store merging)
 *
 * l2switch_oracle_nolearn is ORACLE + NO_LEARN: a lower bound, the oracle
 * with the source answered at no cost at all (no probe, no guard). It is
 * exact on the warmed scenario only because every source there is already
 * learned; no specializer may drop the guard that proves it.
 *
 * NO_* variants change what the NF does (they attribute cost); FREE_*
 * variants and ORACLE behave exactly like the original on the warmed bench
 * scenario (the tables hold its whole FDB, vlans and ports), except that
 * FREE_SRC does not compare a known source's timestamp against half the
 * aging time (one subtraction and compare; no entry of the scenario is
 * older than a few seconds, so it never refreshes).
 */
#ifdef ORACLE
#define FREE_PORTS
#define FREE_VLANS
#define FREE_SRC
#define FREE_DST
#endif
/* l2switch: a VLAN-aware MAC learning bridge in XDP.
 *
 * Each port (an interface, keyed by ifindex in `ports`) has a bridge port
 * number, used as the bit of the port in the VLAN membership bitmaps of
 * `vlans`, and a PVID for untagged frames. A frame is classified into a
 * VLAN (its 802.1Q tag, or the port's PVID), dropped if the ingress port is
 * not a member, and its source MAC is learned into `fdb`, which the data
 * plane writes. Broadcast, multicast and unknown unicast frames are flooded,
 * which here means handed to the kernel with XDP_PASS (the kernel bridge
 * floods). Known unicast is redirected to the port the destination was
 * learned on, with the egress tagging of that port (tag pushed, popped or
 * rewritten), or dropped when it would go back out of the ingress port.
 * Per-port counters live in the per-CPU `stats` hash.
 */
#include "nf.h"
#include "oracle.h"

#define MAX_PORTS 64   /* bits in a VLAN membership bitmap */
#define MAX_IFINDEX 256
#define MAX_VLANS 4096
#define MAX_FDB 16384

/* Port flags. */
#define PORT_F_ENABLED 0x1
#define PORT_F_LEARNING 0x2

/* FDB entry flags. */
#define FDB_F_STATIC 0x1 /* set by the control plane: never ages or moves */

/* Global configuration, set before load. */
volatile const __u8 cfg_learning = 1;                     /* learn source MACs */
volatile const __u64 cfg_aging_ns = 300ULL * 1000000000ULL; /* dynamic entry lifetime */

struct port {
	__u32 flags;   /* PORT_F_* */
	__u16 pvid;    /* VLAN of untagged frames, 0 = drop untagged */
	__u16 port_no; /* bit in the VLAN bitmaps, < MAX_PORTS */
};

struct vlan {
	__u64 members;  /* ports allowed in the VLAN */
	__u64 untagged; /* members that send the VLAN without a tag */
};

struct fdb_key {
	__u8 mac[ETH_ALEN];
	__u16 vid;
};

struct fdb_entry {
	__u32 ifindex;
	__u32 flags;      /* FDB_F_* */
	__u64 updated_ns; /* bpf_ktime_get_ns() when learned or refreshed */
};

struct port_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;       /* redirected to this port */
	__u64 tx_bytes;
	__u64 flooded;          /* received and handed to the stack to flood */
	__u64 dropped_vlan;     /* ingress or egress VLAN filtering */
	__u64 dropped_hairpin;  /* destination learned on the ingress port */
	__u64 dropped_invalid;  /* disabled port, bad frame or source MAC */
	__u64 learned;          /* new FDB entries */
	__u64 moved;            /* FDB entries that moved to this port */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VLANS);
	__type(key, __u32);
	__type(value, struct vlan);
} vlans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FDB);
	__type(key, struct fdb_key);
	__type(value, struct fdb_entry);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct port_stats);
} stats SEC(".maps");

#if defined(FREE_PORTS) || defined(FREE_VLANS) || defined(FREE_SRC) || defined(FREE_DST)
#include "l2switch_tables.h"
#endif
#if defined(FREE_SRC) || defined(FREE_DST) || defined(WIDE_KEYS) /* CEILING */
/* fdb_key64 is struct fdb_key as the 64-bit word the table keys on, built
 * in a register from the frame: writing the key's parts to the stack and
 * loading them back as one word would stall store forwarding. */
static __always_inline __u64 fdb_key64(const __u8 *mac, __u16 vid)
{
	return (__u64)*(const __u32 *)mac | (__u64)*(const __u16 *)(mac + 4) << 32 | (__u64)vid << 48;
}
#endif
#ifdef WIDE_KEYS /* CEILING */
#define KEY_ALIGN __attribute__((aligned(8)))
#define FDB_KEY_SET(k, m) (*(__u64 *)&(k) = fdb_key64(m, vid))
#else
#define KEY_ALIGN
#define FDB_KEY_SET(k, m) __builtin_memcpy((k).mac, m, ETH_ALEN)
#endif
#ifdef FREE_PORTS /* CEILING */
#define PORT_LOOKUP(ifx) oracle_port(*(ifx))
#else
#define PORT_LOOKUP(ifx) bpf_map_lookup_elem(&ports, ifx)
#endif

/* port_stats_get returns this CPU's counters of a port, creating them. */
static __always_inline struct port_stats *port_stats_get(__u32 ifindex)
{
#ifdef NO_STATS /* CEILING */
	return 0;
#endif
	struct port_stats *s = bpf_map_lookup_elem(&stats, &ifindex);
	if (s)
		return s;
	struct port_stats zero = {};
	bpf_map_update_elem(&stats, &ifindex, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&stats, &ifindex);
}

static __always_inline int fdb_expired(const struct fdb_entry *e, __u64 now)
{
#ifdef NO_CLOCK /* CEILING: now is 0, aging is off */
	return 0;
#endif
	return !(e->flags & FDB_F_STATIC) && now - e->updated_ns > cfg_aging_ns;
}

/* fdb_learn records that key->mac lives behind ifindex. It writes the map
 * only for a new or moved address; a known one gets its timestamp refreshed
 * in place, at most twice per aging period. Static entries are left alone,
 * which also stops a spoofed source from stealing their address. */
static __noinline int fdb_learn(const struct fdb_key *key, __u32 ifindex,
				__u64 now, struct port_stats *st)
{
	struct fdb_entry *e = bpf_map_lookup_elem(&fdb, key);
	int moved = 0;

	if (e) {
		if (e->flags & FDB_F_STATIC)
			return 0;
		if (e->ifindex == ifindex && !fdb_expired(e, now)) {
#ifndef NO_CLOCK /* CEILING: now is 0, no refresh */
			if (now - e->updated_ns > cfg_aging_ns / 2)
				e->updated_ns = now;
#endif
			return 0;
		}
		/* Read before the update: it may recycle the old element. */
		moved = e->ifindex != ifindex;
	}
	struct fdb_entry n = { .ifindex = ifindex, .updated_ns = now };
	if (bpf_map_update_elem(&fdb, key, &n, BPF_ANY))
		return -1;
	if (st) {
		if (moved)
			st->moved++;
		else
			st->learned++;
	}
	return 0;
}

/* egress_tagging makes the frame carry vid the way the egress port wants:
 * tagged members get a tag with vid, untagged members none. */
static __noinline int egress_tagging(struct xdp_md *ctx, __u32 tagged,
				     __u16 tag_vid, __u16 vid, __u32 untagged)
{
	if (tagged && untagged)
		return nf_vlan_pop(ctx);
	if (!tagged && !untagged)
		return nf_vlan_push(ctx, vid);
	if (tagged && tag_vid != vid) {
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		return nf_vlan_set_vid(data, data_end, vid);
	}
	return 0;
}

SEC("xdp")
int xdp_l2switch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 in_ifindex = ctx->ingress_ifindex;
	struct nf_pkt p = {};

	struct port_stats *st = port_stats_get(in_ifindex);
	if (st) {
		st->rx_packets++;
		st->rx_bytes += len;
	}

	const struct port *in = PORT_LOOKUP(&in_ifindex);
	if (!in || !(in->flags & PORT_F_ENABLED) || in->port_no >= MAX_PORTS)
		goto drop_invalid;

	p.data = data;
	p.data_end = data_end;
	if (nf_parse_eth(&p) != NF_OK)
		goto drop_invalid;

	/* Classify: the outer tag's VID, or the PVID for untagged and
	 * priority-tagged (VID 0) frames. */
	__u32 tagged = p.l3_off != sizeof(struct ethhdr);
	__u16 vid = p.vlan_id ? p.vlan_id : in->pvid;
	if (!vid)
		goto drop_vlan;
	__u32 vkey = vid;
#ifdef FREE_VLANS /* CEILING */
	const struct vlan *vl = oracle_vlan(vkey);
#else
	const struct vlan *vl = bpf_map_lookup_elem(&vlans, &vkey);
#endif
	if (!vl || !(vl->members & (1ULL << in->port_no)))
		goto drop_vlan;

	struct ethhdr *eth = p.eth;
	if (nf_mac_is_multicast(eth->h_source) || nf_mac_is_zero(eth->h_source))
		goto drop_invalid;

#ifdef NO_CLOCK /* CEILING */
	__u64 now = 0;
#else
	__u64 now = bpf_ktime_get_ns();
#endif
	struct fdb_key key KEY_ALIGN = { .vid = vid };
#ifndef NO_LEARN /* CEILING */
	if (cfg_learning && (in->flags & PORT_F_LEARNING)) {
#ifdef FREE_SRC /* CEILING: a known source on its own port, or a static one, needs nothing */
		const struct oracle_slot *src = oracle_find(oracle_fdb, ORACLE_FDB_BITS, fdb_key64(eth->h_source, vid));
		if (!src || (!(src->b & FDB_F_STATIC) && src->a != in_ifindex)) {
			FDB_KEY_SET(key, eth->h_source);
			fdb_learn(&key, in_ifindex, now, st);
		}
#else
		FDB_KEY_SET(key, eth->h_source);
		fdb_learn(&key, in_ifindex, now, st);
#endif
	}
#endif
#ifdef NO_FORWARD /* CEILING */
	goto flood;
#endif

	if (nf_mac_is_multicast(eth->h_dest))
		goto flood;
#ifdef FREE_DST /* CEILING: a static entry needs no aging check */
	__u32 out_ifindex;
	const struct oracle_slot *ds = oracle_find(oracle_fdb, ORACLE_FDB_BITS, fdb_key64(eth->h_dest, vid));
	if (!ds)
		goto flood;
	if (ds->b & FDB_F_STATIC) {
		out_ifindex = ds->a;
	} else {
		FDB_KEY_SET(key, eth->h_dest);
		const struct fdb_entry *dst = bpf_map_lookup_elem(&fdb, &key);
		if (!dst || fdb_expired(dst, now))
			goto flood;
		out_ifindex = dst->ifindex;
	}
#else
	FDB_KEY_SET(key, eth->h_dest);
	const struct fdb_entry *dst = bpf_map_lookup_elem(&fdb, &key);
	if (!dst || fdb_expired(dst, now))
		goto flood;

	__u32 out_ifindex = dst->ifindex;
#endif
	if (out_ifindex == in_ifindex) {
		if (st)
			st->dropped_hairpin++;
		return XDP_DROP;
	}
	const struct port *out = PORT_LOOKUP(&out_ifindex);
	if (!out || !(out->flags & PORT_F_ENABLED) || out->port_no >= MAX_PORTS ||
	    !(vl->members & (1ULL << out->port_no)))
		goto drop_vlan;

#ifndef NO_TAGGING /* CEILING */
	if (egress_tagging(ctx, tagged, p.vlan_id, vid,
			   (vl->untagged >> out->port_no) & 1))
		goto drop_invalid;
#endif

	struct port_stats *ost = port_stats_get(out_ifindex);
	if (ost) {
		ost->tx_packets++;
		ost->tx_bytes += (void *)(long)ctx->data_end - (void *)(long)ctx->data;
	}
	return bpf_redirect(out_ifindex, 0);

flood:
	if (st)
		st->flooded++;
	return XDP_PASS;
drop_vlan:
	if (st)
		st->dropped_vlan++;
	return XDP_DROP;
drop_invalid:
	if (st)
		st->dropped_invalid++;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
