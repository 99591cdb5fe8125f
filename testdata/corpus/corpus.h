/* Common includes for the round-trip corpus. Every program in this directory
 * is written like independent third-party code: it does its own parsing and
 * uses libbpf conventions (SEC names, BTF-defined maps, globals in
 * .rodata/.data/.bss). The corpus exists to exercise the program model's lift
 * and lower on real compiler output, so the programs deliberately differ in
 * code shape: loops, callbacks, switches, calls, one very large function.
 */
#ifndef CORPUS_H
#define CORPUS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* linux/icmp.h pulls in libc socket headers that do not build for the BPF
 * target on multiarch hosts, so the ICMP header is declared here. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

#endif
