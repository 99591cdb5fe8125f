//go:build linux

package bench

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A lane is one driver with its prog array and floor program. The kernel
// lets a program into a prog array only if it matches the array's owner
// (the driver) in program type, JIT, xdp.frags, sleepability and, since
// Linux 6.x, expected attach type: programs loaded from an ELF section
// "xdp" carry BPF_XDP, programs built in Go usually none, and "xdp.frags"
// programs carry the frags flag. The harness keeps one lane per such
// class, loaded when a program of that class first comes along.
type lane struct {
	class  laneClass
	progs  *ebpf.Map
	driver *ebpf.Program
	floor  *ebpf.Program
}

// laneClass is what a prog array's owner and its members must share.
type laneClass struct {
	attach ebpf.AttachType
	frags  bool
}

func (c laneClass) String() string {
	s := "attach type none"
	if c.attach == ebpf.AttachXDP {
		s = "attach type xdp"
	}
	if c.frags {
		s += ", xdp.frags"
	}
	return s
}

// laneClasses is the order in which classes are tried: most NFs come from
// clang objects with SEC("xdp").
var laneClasses = []laneClass{
	{ebpf.AttachXDP, false},
	{ebpf.AttachNone, false},
	{ebpf.AttachXDP, true},
	{ebpf.AttachNone, true},
}

func (l *lane) close() error {
	var errs []error
	for _, p := range []*ebpf.Program{l.driver, l.floor} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	if l.progs != nil {
		errs = append(errs, l.progs.Close())
	}
	return errors.Join(errs...)
}

// newLane loads a driver, prog array and floor program of class c.
func (h *Harness) newLane(c laneClass) (*lane, error) {
	l := &lane{class: c}
	var flags uint32
	if c.frags {
		flags = unix.BPF_F_XDP_HAS_FRAGS
	}
	var err error
	l.progs, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "bench_progs", Type: ebpf.ProgramArray,
		KeySize: 4, ValueSize: 4, MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: prog array: %w", err)
	}
	l.driver, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_driver", Type: ebpf.XDP, AttachType: c.attach, Flags: flags, License: "GPL",
		Instructions: driverInsns(h.state, h.trace, l.progs, h.n, h.slot),
	})
	if err != nil {
		l.close()
		return nil, fmt.Errorf("bench: load driver (%s; needs root: it keeps a packet address in a map): %w", c, err)
	}
	l.floor, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_floor", Type: ebpf.XDP, AttachType: c.attach, Flags: flags, License: "GPL",
		Instructions: floorInsns(),
	})
	if err != nil {
		l.close()
		return nil, fmt.Errorf("bench: load floor program (%s): %w", c, err)
	}
	return l, nil
}

// laneFor returns the lane whose prog array accepts prog, loading lanes as
// needed, and leaves prog in the lane's slot.
func (h *Harness) laneFor(prog *ebpf.Program) (*lane, error) {
	if prog.Type() != ebpf.XDP {
		return nil, fmt.Errorf("bench: program %s is %s, want XDP", prog, prog.Type())
	}
	var errs []error
	for _, c := range laneClasses {
		l := h.lanes[c]
		if l == nil {
			var err error
			if l, err = h.newLane(c); err != nil {
				errs = append(errs, err)
				continue
			}
			h.lanes[c] = l
		}
		err := l.progs.Update(uint32(0), prog, ebpf.UpdateAny)
		if err == nil {
			return l, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c, err))
	}
	return nil, fmt.Errorf("bench: program %s fits no driver's prog array (JIT off, sleepable, or an unusual attach type?): %w", prog, errors.Join(errs...))
}
