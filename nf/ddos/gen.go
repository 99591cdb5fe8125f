// Package ddos is a per-source IPv4 DDoS mitigation filter, one of the
// sample network functions the optimizer works on.
//
// The data plane (bpf/ddos.c, program xdp_ddos) drops sources found in the
// exact blocklist hash or inside a prefix of the blocklist_lpm trie, then
// counts every other IPv4 packet per source in the rate per-CPU hash (which
// it writes itself) and drops a source once it exceeds the configured
// packets per window. The limit and the window length are .rodata
// variables. IPv6 and non-IP traffic pass; malformed IPv4 is dropped.
//
// The control plane in this package turns a Config into map contents
// (mapstate.State) and variables.
package ddos

//go:generate go tool bpf2go -tags linux -go-package ddos -target bpfel -type ddos_lpm_key -type ddos_block -type ddos_rate -type ddos_counter ddos bpf/ddos.c -- -I../include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
