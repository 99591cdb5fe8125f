// Package firewall is a stateless and stateful IPv4 ACL (iptables-like),
// one of the sample network functions the optimizer works on.
//
// The data plane (bpf/firewall.c) is three XDP programs chained by tail
// calls through the stages program array: xdp_firewall (entry: parse and
// dispatch), fw_conntrack (connection tracking, both directions) and fw_acl
// (rule evaluation). Rules are evaluated in a fixed priority order, first
// match wins: exact 5-tuple rules, then source prefixes (longest prefix),
// then destination prefixes (longest prefix), then the default policy.
// Allowed flows are recorded in the ct LRU table by the data plane when the
// stateful feature is on, so their return traffic is allowed too. Every
// stage is switched on or off at run time through the features array.
//
// The control plane in this package turns a Config into map contents
// (mapstate.State) and .rodata variables.
package firewall

//go:generate go tool bpf2go -tags linux -go-package firewall -target bpfel -type fw_tuple -type fw_verdict -type fw_lpm_key -type fw_ct_entry -type fw_counter firewall bpf/firewall.c -- -I../include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
