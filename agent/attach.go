package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// attacher is one attachment point of a program. Every method must leave
// the point running either the old or the new program, never nothing.
type attacher interface {
	spec() Attachment
	// attach installs p where nothing of ours is installed yet.
	attach(p *ebpf.Program) error
	// swap atomically replaces the running program by p.
	swap(p *ebpf.Program) error
	// current returns the ID of the program running there.
	current() (ebpf.ProgramID, error)
	// detach removes the program (full teardown).
	detach() error
	// release drops the agent's handles and leaves the program attached
	// (only where the attachment outlives the handle: pinned links, TC
	// filters, prog arrays).
	release() error
	// persistent reports whether the attachment outlives the process.
	persistent() bool
}

// inNetns runs fn on a thread switched into the network namespace at
// path ("" runs fn as is).
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine ends instead of reusing a thread in the wrong netns.
		return errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// netlinkHandle returns a netlink handle in the namespace at path.
func netlinkHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

// interfaceIndex resolves an interface name in the attachment's namespace.
func interfaceIndex(a Attachment) (int, error) {
	if a.Interface == "" {
		return 0, fmt.Errorf("attachment %s: no interface given", a)
	}
	h, err := netlinkHandle(a.Netns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(a.Interface)
	if err != nil {
		where := "this network namespace"
		if a.Netns != "" {
			where = "network namespace " + a.Netns
		}
		return 0, fmt.Errorf("interface %q not found in %s: %w", a.Interface, where, err)
	}
	return l.Attrs().Index, nil
}

// xdpAttacher attaches through a bpf_link, pinned when pin is set.
type xdpAttacher struct {
	a       Attachment
	ifindex int
	pin     string
	l       link.Link
}

func (x *xdpAttacher) spec() Attachment { return x.a }
func (x *xdpAttacher) persistent() bool { return x.pin != "" }

func (x *xdpAttacher) attach(p *ebpf.Program) error {
	modes := []link.XDPAttachFlags{link.XDPDriverMode, link.XDPGenericMode}
	switch x.a.XDPMode {
	case XDPNative:
		modes = modes[:1]
	case XDPGeneric:
		modes = modes[1:]
	}
	var errs []error
	for _, mode := range modes {
		var l link.Link
		err := inNetns(x.a.Netns, func() (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: p, Interface: x.ifindex, Flags: mode})
			return err
		})
		if err == nil {
			if x.pin != "" {
				if err := l.Pin(x.pin); err != nil {
					l.Close()
					return fmt.Errorf("pin XDP link: %w", err)
				}
			}
			x.l = l
			return nil
		}
		errs = append(errs, fmt.Errorf("mode %v: %w", mode, err))
	}
	return fmt.Errorf("attach XDP to %s: %w", x.a.Interface, errors.Join(errs...))
}

func (x *xdpAttacher) swap(p *ebpf.Program) error {
	if err := x.l.Update(p); err != nil {
		return fmt.Errorf("update XDP link on %s: %w", x.a.Interface, err)
	}
	return nil
}

func (x *xdpAttacher) current() (ebpf.ProgramID, error) {
	info, err := x.l.Info()
	if err != nil {
		return 0, err
	}
	return info.Program, nil
}

func (x *xdpAttacher) detach() error {
	if x.l == nil {
		return nil
	}
	var errs []error
	if x.pin != "" {
		errs = append(errs, x.l.Unpin())
	}
	errs = append(errs, x.l.Close())
	x.l = nil
	return errors.Join(errs...)
}

func (x *xdpAttacher) release() error {
	if x.l == nil || x.pin == "" {
		// An unpinned link lives as long as its fd: keep it.
		return nil
	}
	err := x.l.Close()
	x.l = nil
	return err
}

// tcAttacher attaches a direct-action cls_bpf filter on clsact.
type tcAttacher struct {
	a       Attachment
	ifindex int
}

func (t *tcAttacher) spec() Attachment { return t.a }
func (t *tcAttacher) persistent() bool { return true }

func (t *tcAttacher) parent() uint32 {
	if t.a.Kind == TCEgress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

func (t *tcAttacher) filter(p *ebpf.Program) *netlink.BpfFilter {
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: t.ifindex,
			Parent:    t.parent(),
			Handle:    t.a.Handle,
			Priority:  t.a.Priority,
			Protocol:  unix.ETH_P_ALL,
		},
		Name:         t.a.Program,
		DirectAction: true,
	}
	if p != nil {
		f.Fd = p.FD()
	}
	return f
}

func (t *tcAttacher) attach(p *ebpf.Program) error {
	h, err := netlinkHandle(t.a.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: t.ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscAdd(q); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc on %s: %w", t.a.Interface, err)
	}
	return t.swap(p)
}

func (t *tcAttacher) swap(p *ebpf.Program) error {
	h, err := netlinkHandle(t.a.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.FilterReplace(t.filter(p)); err != nil {
		return fmt.Errorf("replace TC filter on %s: %w", t.a.Interface, err)
	}
	return nil
}

func (t *tcAttacher) current() (ebpf.ProgramID, error) {
	h, err := netlinkHandle(t.a.Netns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByIndex(t.ifindex)
	if err != nil {
		return 0, err
	}
	fs, err := h.FilterList(l, t.parent())
	if err != nil {
		return 0, err
	}
	for _, f := range fs {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Priority == t.a.Priority && bf.Handle == t.a.Handle {
			return ebpf.ProgramID(bf.Id), nil
		}
	}
	return 0, fmt.Errorf("no TC filter prio %d handle %#x on %s", t.a.Priority, t.a.Handle, t.a.Interface)
}

func (t *tcAttacher) detach() error {
	h, err := netlinkHandle(t.a.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.FilterDel(t.filter(nil)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete TC filter on %s: %w", t.a.Interface, err)
	}
	return nil
}

func (t *tcAttacher) release() error { return nil }

// tailCallAttacher places the program in a prog-array slot.
type tailCallAttacher struct {
	a     Attachment
	array *ebpf.Map // owned by the NF
}

func (c *tailCallAttacher) spec() Attachment { return c.a }
func (c *tailCallAttacher) persistent() bool { return true }

func (c *tailCallAttacher) attach(p *ebpf.Program) error { return c.swap(p) }

func (c *tailCallAttacher) swap(p *ebpf.Program) error {
	if err := c.array.Put(c.a.Index, p); err != nil {
		return fmt.Errorf("prog array %s[%d]: %w", c.a.ProgArray, c.a.Index, err)
	}
	return nil
}

func (c *tailCallAttacher) current() (ebpf.ProgramID, error) {
	var id uint32
	if err := c.array.Lookup(c.a.Index, &id); err != nil {
		return 0, fmt.Errorf("prog array %s[%d]: %w", c.a.ProgArray, c.a.Index, err)
	}
	return ebpf.ProgramID(id), nil
}

func (c *tailCallAttacher) detach() error {
	if err := c.array.Delete(c.a.Index); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("prog array %s[%d]: %w", c.a.ProgArray, c.a.Index, err)
	}
	return nil
}

func (c *tailCallAttacher) release() error { return nil }
