// Package router is an IPv4 router in XDP: the Morpheus demo network
// function.
//
// The data plane (bpf/router.c) looks the destination up in the `routes`
// LPM trie, resolves the route's next hop in the `nexthops` array, decrements
// the TTL with an incremental checksum update, rewrites the MAC addresses
// (destination from the next hop, source from the egress interface in
// `ifconfig`), pushes, pops or rewrites the egress VLAN tag, and sends the
// frame with bpf_redirect, or XDP_TX when it leaves through the interface it
// arrived on. Frames the fast path does not own (non-IPv4, TTL expiry, local,
// multicast and broadcast destinations, disabled interfaces) go to the
// kernel with XDP_PASS; malformed IPv4 is dropped. Per-CPU `counters` record
// each outcome.
//
// The control plane in this package turns a Config (interfaces, named next
// hops, CIDR routes) into map contents.
package router

//go:generate go tool bpf2go -tags linux -go-package router -target bpfel -type route_key -type route -type nexthop -type iface -type counter bpf bpf/router.c -- -I../include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
