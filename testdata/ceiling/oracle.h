/* Compiled-in answers for the ceiling experiment's variants.
 *
 * A table built by gen (l2switch_tables.h, lb_tables.h) holds every entry
 * of a map as the warmed bench scenario leaves it, placed by two-choice
 * (cuckoo) hashing: a key is in one of two slots, so a lookup is at most
 * two multiply-shift hashes, two loads and two compares, and a key in
 * neither slot is not in the map. That is what answering a lookup from a
 * specialized program at a 100% hit rate costs (for every key, hot or not),
 * without any map access.
 */
#ifndef CEILING_ORACLE_H
#define CEILING_ORACLE_H

struct oracle_slot {
	__u64 key;
	__u32 a, b;
};

/* For 16-byte keys: key holds the xor of the two halves, key2 the second. */
struct oracle_slot2 {
	__u64 key, key2;
	__u32 a;
};

#define ORACLE_MUL1 0x9E3779B97F4A7C15ULL
#define ORACLE_MUL2 0xC2B2AE3D27D4EB4FULL

/* oracle_find returns the slot of a table of 1 << bits slots holding k,
 * or NULL when k is not in the map. */
static __always_inline const struct oracle_slot *
oracle_find(const struct oracle_slot *tab, int bits, __u64 k)
{
	const struct oracle_slot *s = &tab[(k * ORACLE_MUL1) >> (64 - bits)];
	if (s->key == k)
		return s;
	s = &tab[(k * ORACLE_MUL2) >> (64 - bits)];
	return s->key == k ? s : 0;
}

/* oracle_find2 is oracle_find for a 16-byte key of halves k0, k1. */
static __always_inline const struct oracle_slot2 *
oracle_find2(const struct oracle_slot2 *tab, int bits, __u64 k0, __u64 k1)
{
	__u64 k = k0 ^ k1;
	const struct oracle_slot2 *s = &tab[(k * ORACLE_MUL1) >> (64 - bits)];
	if (s->key == k && s->key2 == k1)
		return s;
	s = &tab[(k * ORACLE_MUL2) >> (64 - bits)];
	return s->key == k && s->key2 == k1 ? s : 0;
}

#endif
