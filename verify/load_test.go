package verify

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// openFDs counts the file descriptors of this process.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestLoad(t *testing.T) {
	kerneltest.Require(t)

	// Warm up caches that stay open for the life of the process (kernel
	// BTF, feature probes) before counting descriptors.
	if coll, err := Load(nf{}.spec(), nil, LoadOptions{}); err != nil {
		t.Fatal(err)
	} else {
		coll.Close()
	}

	tests := []struct {
		name string
		cand Candidate
		opts LoadOptions
		// wantVerifier names the rejected program; "" means success.
		wantVerifier string
		wantLog      string
		wantErr      string
	}{
		{name: "original"},
		{name: "candidate", cand: nf{overrideDst: ip2, overrideVerdict: xdpPass}.candidate()},
		{name: "candidate with log", cand: nf{inc: 2}.candidate(), opts: LoadOptions{LogLevel: ebpf.LogLevelInstruction}},
		{name: "missing bounds check", cand: nf{noBoundsCheck: true}.candidate(),
			wantVerifier: "logic", wantLog: "invalid access to packet"},
		{name: "short log tail", cand: nf{noBoundsCheck: true}.candidate(), opts: LoadOptions{LogTail: 2},
			wantVerifier: "logic", wantLog: "processed"},
		{name: "unknown program", cand: Candidate{"other": nf{}.logic()}, wantErr: `"other" does not exist`},
		{name: "empty program", cand: Candidate{"logic": nil}, wantErr: "no instructions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := openFDs(t)
			coll, err := Load(nf{}.spec(), tt.cand, tt.opts)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
			case tt.wantVerifier != "":
				var ve *VerifierError
				if !errors.As(err, &ve) {
					t.Fatalf("error %v (%T), want *VerifierError", err, err)
				}
				if ve.Program != tt.wantVerifier || !ve.Candidate || len(ve.Log) == 0 {
					t.Errorf("VerifierError program %q candidate %v log %d lines", ve.Program, ve.Candidate, len(ve.Log))
				}
				if tt.opts.LogTail > 0 && (len(ve.Log) != tt.opts.LogTail || ve.Omitted == 0) {
					t.Errorf("log tail %d lines, %d omitted; want %d", len(ve.Log), ve.Omitted, tt.opts.LogTail)
				}
				if msg := err.Error(); !strings.Contains(msg, `"`+tt.wantVerifier+`"`) || !strings.Contains(msg, tt.wantLog) {
					t.Errorf("error text lacks program name or %q:\n%s", tt.wantLog, msg)
				}
				var cve *ebpf.VerifierError
				if !errors.As(err, &cve) {
					t.Errorf("cilium VerifierError not reachable through errors.As")
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if tt.opts.LogLevel != 0 && coll.Programs["logic"].VerifierLog == "" {
					t.Errorf("log level %v gave no verifier log", tt.opts.LogLevel)
				}
				coll.Close()
			}
			if after := openFDs(t); after != before {
				t.Errorf("%d file descriptors before, %d after: the load left something behind", before, after)
			}
		})
	}
}

// TestLoadMapReplacements loads a candidate against the maps of a running
// original, as the optimizer does before a swap.
func TestLoadMapReplacements(t *testing.T) {
	kerneltest.Require(t)
	live, err := Load(nf{}.spec(), nil, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := routes().Apply(live.Maps); err != nil {
		t.Fatal(err)
	}
	cand, err := Load(nf{}.spec(), nf{inc: 5}.candidate(), LoadOptions{MapReplacements: map[string]*ebpf.Map{
		"verdicts": live.Maps["verdicts"], "counters": live.Maps["counters"],
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer cand.Close()

	tests := []struct {
		dst  [4]byte
		want uint32
	}{{ip1, xdpPass}, {ip2, xdpDrop}, {ip3, xdpTX}, {ip4, xdpPass}}
	for _, tt := range tests {
		if got := kerneltest.Run(t, cand.Programs["logic"], frame(tt.dst)).Verdict; got != tt.want {
			t.Errorf("dst %v: verdict %d, want %d from the live map", tt.dst, got, tt.want)
		}
	}
	var count uint64
	if err := live.Maps["counters"].Lookup(uint32(0), &count); err != nil {
		t.Fatal(err)
	}
	if count != 5*uint64(len(tests)) {
		t.Errorf("live counter %d, want %d: the candidate did not share the map", count, 5*len(tests))
	}
}

// TestMinFrameSize checks MinFrameSize against the running kernel.
func TestMinFrameSize(t *testing.T) {
	kerneltest.Require(t)
	coll, err := Load(nf{}.spec(), nil, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, tt := range []struct {
		size int
		ok   bool
	}{{MinFrameSize - 1, false}, {MinFrameSize, true}} {
		_, err := coll.Programs["logic"].Run(&ebpf.RunOptions{Data: make([]byte, tt.size)})
		if (err == nil) != tt.ok {
			t.Errorf("%d-byte frame: error %v, want ok=%v", tt.size, err, tt.ok)
		}
	}
}
