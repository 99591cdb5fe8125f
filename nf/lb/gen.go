// Package lb is a Katran-like L4 load balancer for IPv4 virtual IPs (VIPs),
// one of the sample network functions the optimizer works on.
//
// The data plane (bpf/lb.c, program xdp_lb) matches (destination, port,
// protocol) against the vips hash, keeps established flows on their backend
// through the conns LRU table it writes itself, hashes new flows onto a
// Maglev consistent-hash ring (ring array, one slice of RingSize slots per
// VIP) and sends the packet to the backend encapsulated in IP-in-IP, with
// the gateway as Ethernet destination (XDP_TX). Echo requests to a VIP
// address are answered; all other traffic is passed to the kernel.
//
// The control plane in this package turns a Config (VIPs with their
// backends) into map contents (mapstate.State) and .rodata variables.
package lb

//go:generate go tool bpf2go -tags linux -go-package lb -target bpfel -type vip_key -type vip_meta -type backend -type flow_key -type conn -type lb_counter lb bpf/lb.c -- -I../include -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
