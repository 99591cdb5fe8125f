// Package l2switch is a VLAN-aware MAC learning bridge in XDP.
//
// The data plane (bpf/l2switch.c) classifies each frame into a VLAN (its
// 802.1Q tag or the ingress port's PVID), enforces VLAN membership from the
// `vlans` map and per-port settings from the `ports` map, learns source MACs
// into the `fdb` hash itself (with bpf_ktime_get_ns timestamps), floods
// broadcast, multicast and unknown unicast by passing the frame to the
// kernel (XDP_PASS), and redirects known unicast to the learned port with
// that port's egress tagging, dropping hairpins. Learning and the aging time
// are .rodata constants; per-port counters are in the per-CPU `stats` hash.
//
// The control plane in this package turns a Config (ports, VLANs, static
// FDB entries, learning and aging) into map contents and variables.
package l2switch

//go:generate go tool bpf2go -tags linux -go-package l2switch -target bpfel -type port -type vlan -type fdb_key -type fdb_entry -type port_stats bpf bpf/l2switch.c -- -I../include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
