package api

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// TestRunStatsAcrossSwaps checks that a program's packet total neither
// goes backwards nor counts twice when the kernel programs in its place
// change: original → candidate → original again (as around a profiling
// window) → a program that replaced one now gone.
func TestRunStatsAcrossSwaps(t *testing.T) {
	kerneltest.Require(t)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enabling bpf_stats: %v", err)
	}
	defer stats.Close()
	load := func() (*ebpf.Program, ebpf.ProgramID) {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.XDP,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		})
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return p, id
	}
	run := func(p *ebpf.Program, n int) {
		if _, err := p.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: uint32(n)}); err != nil {
			t.Fatal(err)
		}
	}
	a, idA := load()
	defer a.Close()
	b, idB := load()
	c, idC := load()
	defer c.Close()

	be := &AgentBackend{runs: map[string]*runState{}}
	defer be.Close()
	steps := []struct {
		name string
		do   func()
		id   ebpf.ProgramID
		want uint64
	}{
		{"original runs", func() { run(a, 10) }, idA, 10},
		{"candidate swapped in", func() { run(b, 5) }, idB, 15},
		{"original back", func() { run(a, 10) }, idA, 25},
		{"candidate gone, another in", func() { b.Close(); run(c, 1) }, idC, 26},
		{"no packets", func() {}, idC, 26},
	}
	for _, s := range steps {
		s.do()
		got := be.runStats("nf:p", s.id)
		if got.Packets != s.want {
			t.Fatalf("%s: %d packets, want %d", s.name, got.Packets, s.want)
		}
		if got.RunTime <= 0 {
			t.Fatalf("%s: run time %v", s.name, got.RunTime)
		}
	}
	if r := be.runs["nf:p"]; len(r.seen) > 2 {
		t.Errorf("%d kernel programs remembered; the closed one should be folded away", len(r.seen))
	}
}
