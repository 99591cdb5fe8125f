package traffic

import (
	"math"
	"net"
	"net/netip"
	"reflect"
	"testing"
)

// TestFittedSkew checks that a generated trace follows its locality: the
// Zipf exponent fitted from the rank/frequency curve of the frames alone
// (no generator bookkeeping) is near the requested one.
func TestFittedSkew(t *testing.T) {
	const flows, packets = 1000, 200000
	set := FlowSet{Hit: syntheticFlows(flows, 3)}
	for _, tc := range []struct {
		name string
		opts Options
		want float64
	}{
		{"high", Options{Locality: LocalityHigh}, 1.1},
		{"low", Options{Locality: LocalityLow}, 0.6},
		{"none", Options{Locality: LocalityNone}, 0},
		{"skew 0.8", Options{Locality: LocalityNone, Skew: 0.8}, 0.8},
		{"skew 1.5", Options{Skew: 1.5}, 1.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Packets, o.Seed = packets, 5
			tr, err := Generate(set, o)
			if err != nil {
				t.Fatal(err)
			}
			st := Analyze(tr.Frames, 5)
			if st.Packets != packets || st.Unparsed != 0 || st.Skew == nil {
				t.Fatalf("stats %+v", st)
			}
			t.Logf("fitted skew %.3f over %d ranks (want %.2f), %d flows", *st.Skew, st.SkewRanks, tc.want, st.Flows)
			if math.Abs(*st.Skew-tc.want) > 0.1 {
				t.Errorf("fitted skew %.3f, want %.2f ± 0.1", *st.Skew, tc.want)
			}
			if st.Flows > flows || len(st.Top) != 5 {
				t.Errorf("%d flows, %d top entries", st.Flows, len(st.Top))
			}
			// The top flow of the stats is the trace's most frequent.
			if got, want := float64(st.Top[0].Packets)/packets, tr.TopShare(1); math.Abs(got-want) > 1e-9 {
				t.Errorf("top flow share %.4f, trace says %.4f", got, want)
			}
		})
	}
}

func TestFitSkewExact(t *testing.T) {
	for _, s := range []float64{0, 0.6, 1.1, 2} {
		var c []int
		for r := 1; r <= 200; r++ {
			c = append(c, int(math.Round(1e6*math.Pow(float64(r), -s))))
		}
		got, n := FitSkew(c)
		if math.Abs(got-s) > 0.01 || n < 3 {
			t.Errorf("s=%v: fitted %v over %d ranks", s, got, n)
		}
	}
	if got, _ := FitSkew([]int{1, 2, 3}); !math.IsNaN(got) {
		t.Errorf("too few counts fitted %v, want NaN", got)
	}
}

func TestParse(t *testing.T) {
	base := Flow{
		SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		SrcIP: netip.MustParseAddr("10.1.2.3"), DstIP: netip.MustParseAddr("192.0.2.9"),
		Proto: ProtoUDP, SrcPort: 1234, DstPort: 53,
	}
	tcp := base
	tcp.Proto, tcp.TCPFlags = ProtoTCP, TCPSyn
	vlan := base
	vlan.VLAN = 42
	icmp := base
	icmp.Proto, icmp.DstPort = ProtoICMP, 0
	for name, f := range map[string]Flow{"udp": base, "tcp": tcp, "vlan": vlan, "icmp": icmp} {
		t.Run(name, func(t *testing.T) {
			b, err := Build(f, 128)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, f) {
				t.Errorf("parsed %+v, want %+v", got, f)
			}
		})
	}
	for _, k := range []MalformedKind{MalformedTruncated, MalformedIHL, MalformedTotalLength} {
		b, err := BuildMalformed(base, 64, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(b); err == nil {
			t.Errorf("%s frame parsed", k)
		}
	}
}

// TestFlowsDistinct checks that the per-NF generators return distinct
// flows: a duplicate would merge two popularity ranks into one flow and
// distort the trace's locality.
func TestFlowsDistinct(t *testing.T) {
	const n = 1000
	gens := map[string]func() (FlowSet, error){
		"router": func() (FlowSet, error) {
			cfg, err := RouterConfig(0, []uint32{1, 2}, 1)
			if err != nil {
				return FlowSet{}, err
			}
			return RouterFlows(cfg, 1, n, 2)
		},
		"firewall": func() (FlowSet, error) {
			cfg, err := FirewallConfig(0, false, 1)
			if err != nil {
				return FlowSet{}, err
			}
			return FirewallFlows(cfg, n, 2)
		},
		"lb": func() (FlowSet, error) {
			cfg, err := LBConfig(0, 0, 1)
			if err != nil {
				return FlowSet{}, err
			}
			return LBFlows(cfg, n, 2)
		},
		"ddos": func() (FlowSet, error) {
			cfg, err := DDoSConfig(0, 200, 1000, 1)
			if err != nil {
				return FlowSet{}, err
			}
			return DDoSFlows(cfg, n, 2)
		},
		"l2switch": func() (FlowSet, error) {
			cfg, err := L2SwitchConfig([]uint32{1, 2, 3, 4, 5}, 4, 0, 1)
			if err != nil {
				return FlowSet{}, err
			}
			return L2SwitchFlows(cfg, 1, n, 2)
		},
	}
	for name, gen := range gens {
		t.Run(name, func(t *testing.T) {
			set, err := gen()
			if err != nil {
				t.Fatal(err)
			}
			seen := map[flowID]bool{}
			dups := 0
			for _, f := range append(append([]Flow{}, set.Hit...), set.Miss...) {
				if seen[idOf(f)] {
					dups++
				}
				seen[idOf(f)] = true
			}
			if dups > 0 || len(set.Hit) != n || len(set.Miss) != n {
				t.Errorf("%d hits, %d misses, %d duplicates", len(set.Hit), len(set.Miss), dups)
			}
		})
	}
}
