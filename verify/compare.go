package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/mapstate"
)

// differ holds the state of one differential test run.
type differ struct {
	progs []string
	// a and b are the two originals, c the candidate.
	a, c, b       *instance
	ctxIn         []byte
	maxMismatches int

	// mapNames are the maps compared, sorted; raws their read buffers
	// for the original, the second original and the candidate.
	mapNames []string
	raws     map[string]*[3]*mapstate.Raw
	// every is the map check interval in packets, 0 for the end only.
	every int
	auto  bool
	// periodic, if not nil, names the maps the periodic checks read
	// (DiffOptions.PeriodicMaps); full checks read every map.
	periodic map[string]bool

	// ndLoc holds every place seen nondeterministic (see loc*), which
	// also keeps map bytes and keys from being counted twice; reported
	// holds the map entries already reported, so that a difference that
	// persists is reported once.
	ndLoc    map[string]struct{}
	reported map[string]struct{}
	// ndPacket is set when the current packet showed new nondeterminism.
	ndPacket bool
	// locBuf is ndByte's buffer for a place.
	locBuf []byte
	report *Report
}

// nonIterable lists map types whose contents cannot be listed by key in
// addition to those mapstate.SnapshotMap refuses.
var nonIterable = map[ebpf.MapType]bool{
	ebpf.Queue: true, ebpf.Stack: true, ebpf.BloomFilter: true,
	ebpf.SkStorage: true, ebpf.InodeStorage: true, ebpf.TaskStorage: true,
	ebpf.UserRingbuf: true, ebpf.Arena: true, ebpf.StructOpsMap: true,
}

// planMapChecks selects the comparable maps and the check interval.
func (d *differ) planMapChecks(interval int) error {
	names := make([]string, 0, len(d.a.coll.Maps))
	for name := range d.a.coll.Maps {
		names = append(names, name)
	}
	slices.Sort(names)
	entries := 0
	for _, name := range names {
		m := d.a.coll.Maps[name]
		if name == guard.MapName {
			// The optimizer's guard versions are not state of the
			// network function: the candidate's data-plane tripwires
			// write them, the originals never do. What they decide
			// (cache or original path) shows in everything compared.
			d.report.SkippedMaps = append(d.report.SkippedMaps, name)
			continue
		}
		if nonIterable[m.Type()] {
			d.report.SkippedMaps = append(d.report.SkippedMaps, name)
			continue
		}
		if d.a.ro[name] && d.b.ro[name] && d.c.ro[name] {
			// Proven unchanged by the verifier: all three hold what
			// they were filled with.
			d.report.ReadOnlyMaps = append(d.report.ReadOnlyMaps, name)
			continue
		}
		if d.periodic != nil && !d.periodic[name] {
			// Read at the end only: its size does not matter for the
			// interval, and reading it now (a large array, a big hash's
			// buckets) would cost as much as the final check. A map
			// that turns out not readable is skipped there.
			d.mapNames = append(d.mapNames, name)
			d.raws[name] = &[3]*mapstate.Raw{{}, {}, {}}
			continue
		}
		snap, err := mapstate.ReadRaw(m)
		if errors.Is(err, mapstate.ErrNotIterable) {
			d.report.SkippedMaps = append(d.report.SkippedMaps, name)
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: read map %q: %w", name, err)
		}
		if d.periodic == nil || d.periodic[name] {
			entries += d.planCost(name, m, snap)
		}
		d.mapNames = append(d.mapNames, name)
		d.raws[name] = &[3]*mapstate.Raw{{}, {}, {}}
	}
	switch {
	case interval > 0:
		d.every = interval
	case interval < 0:
		d.every = 0
	case entries <= AutoMapCheckEvery:
		d.every, d.auto = 1, true
	case entries <= AutoMapCheckEntries:
		// Spread the reads: about AutoMapCheckEvery entries per packet.
		d.every, d.auto = (entries+AutoMapCheckEvery-1)/AutoMapCheckEvery, true
	default:
		d.every = 0
	}
	d.report.MapCheck = describeInterval(d.every)
	if interval == 0 && d.every == 0 {
		d.report.MapCheck = fmt.Sprintf("end (maps hold %d entries, weighted by read cost)", entries)
	}
	if d.periodic != nil && d.every > 0 {
		var only []string
		for _, name := range d.mapNames {
			if d.periodic[name] {
				only = append(only, name)
			}
		}
		d.report.MapCheck += fmt.Sprintf(" for the maps programs may write (%s), every map at the end", strings.Join(only, ", "))
	}
	return nil
}

// readCost estimates the cost of reading a map in units of one entry of a
// batch lookup (about 0.27 µs on the reference machine).
func readCost(m *ebpf.Map, r *mapstate.Raw) int {
	return costOf(m.Type(), m.MaxEntries(), r)
}

func costOf(typ ebpf.MapType, maxEntries uint32, r *mapstate.Raw) int {
	n := r.N
	if r.Iterated {
		n *= IteratedEntryCost
	}
	switch typ {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		// A batch lookup walks every bucket, empty or not.
		n += int(maxEntries) / HashBucketsPerEntry
	}
	return n
}

// planCost is the read cost the check interval is planned with: that of
// the map at the capacity its spec gives. A copy created smaller for the
// test (DiffOptions.InsertBounds) is cheaper to read, and is checked as
// often as at full size.
func (d *differ) planCost(name string, m *ebpf.Map, r *mapstate.Raw) int {
	size := m.MaxEntries()
	if ms := d.a.spec.Maps[name]; ms != nil && d.a.headroom[name] != nil {
		size = max(size, ms.MaxEntries)
	}
	return costOf(m.Type(), size, r)
}

func describeInterval(every int) string {
	switch every {
	case 0:
		return "end"
	case 1:
		return "every packet"
	}
	return fmt.Sprintf("every %d packets", every)
}

// run feeds every packet through every entry program of the three
// collections and compares as it goes.
func (d *differ) run(ctx context.Context, packets [][]byte) error {
	checked := 0 // packets covered by the last check of every map
	stopped := false
	for i, pkt := range packets {
		if err := ctx.Err(); err != nil {
			return err
		}
		d.ndPacket = false
		differed := false
		for _, prog := range d.progs {
			ctxIn := d.contextFor(prog, pkt)
			ra := d.a.run(prog, pkt, ctxIn)
			rc := d.c.run(prog, pkt, ctxIn)
			rb := d.b.run(prog, pkt, ctxIn)
			if ra.err != nil || rb.err != nil {
				if err := d.refused(i, len(pkt), prog, ra, rb, rc); err != nil {
					return err
				}
				continue
			}
			d.report.Runs++
			before := d.report.MismatchCount
			d.compareRun(i, prog, ra, rb, rc)
			differed = differed || d.report.MismatchCount > before
		}
		d.report.Packets = i + 1
		if differed || (d.every > 0 && (i+1)%d.every == 0) {
			// A difference is attributed with every map read; a
			// periodic check reads the periodic maps.
			all := differed || d.periodic == nil
			if err := d.checkMaps(i, all); err != nil {
				return err
			}
			if all {
				checked = i + 1
			}
		}
		if d.ndPacket {
			d.report.Nondeterministic.Packets++
		}
		if d.report.MismatchCount >= d.maxMismatches {
			stopped = true
			break
		}
	}
	if !stopped && checked < d.report.Packets {
		d.ndPacket = false
		if err := d.checkMaps(d.report.Packets-1, true); err != nil {
			return err
		}
		if d.ndPacket {
			d.report.Nondeterministic.Packets++
		}
	}
	d.report.Complete = !stopped && d.report.Packets == d.report.Total
	d.markNondeterministic()
	return nil
}

// markNondeterministic flags the kept mismatches that are about a place
// the two original runs disagreed on at some point of the test.
func (d *differ) markNondeterministic() {
	for i := range d.report.Mismatches {
		m := &d.report.Mismatches[i]
		for _, l := range m.locs {
			if _, ok := d.ndLoc[l]; ok {
				m.Nondeterministic = true
				break
			}
		}
	}
}

// Places that can be nondeterministic. Map value bytes and keys are
// counted in the report the first time they are seen.
func locVerdict(prog string) string { return "v\x00" + prog }
func locBytes(what, prog string, off int) string {
	return fmt.Sprintf("%s\x00%s\x00%d", what, prog, off)
}
func locKeySet(name string) string   { return "K\x00" + name }
func locKey(name, key string) string { return fmt.Sprintf("k\x00%s\x00%x", name, key) }
func locMapByte(name string, key []byte, cpu, off int) string {
	return string(appendLocMapByte(nil, name, key, cpu, off))
}

// appendLocMapByte appends locMapByte's place to buf without formatting
// through fmt: a map with a clock in every value (the DDoS filter's rate
// table) excludes thousands of bytes per check.
func appendLocMapByte(buf []byte, name string, key []byte, cpu, off int) []byte {
	buf = append(buf, "b\x00"...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = hex.AppendEncode(buf, key)
	buf = append(buf, 0)
	buf = strconv.AppendInt(buf, int64(cpu), 10)
	buf = append(buf, 0)
	return strconv.AppendInt(buf, int64(off), 10)
}

func (d *differ) seen(loc string) bool {
	if _, ok := d.ndLoc[loc]; ok {
		return false
	}
	d.ndLoc[loc] = struct{}{}
	return true
}

// refused handles a packet the kernel would not run the original on. The
// skb test runner, for one, refuses IPv4 and IPv6 frames shorter than their
// L3 header. Such input is rejected before the program runs, so if the
// candidate is refused the same way the packet is skipped; a candidate
// that runs where the original cannot, or the two originals disagreeing,
// is an error of the harness rather than of the candidate.
func (d *differ) refused(pkt, size int, prog string, a, b, c runResult) error {
	ea, eb, ec := errnoOf(a.err), errnoOf(b.err), errnoOf(c.err)
	if a.err == nil || b.err == nil || ea != eb || ea == 0 {
		return fmt.Errorf("verify: packet %d: program %s: original runs failed differently: %v / %v", pkt, prog, a.err, b.err)
	}
	if ec != ea {
		typ := d.a.coll.Programs[prog].Type()
		var got string
		if c.err != nil {
			got = c.err.Error()
		} else {
			got = verdictName(typ, c.verdict)
		}
		d.addMismatch(Mismatch{
			Packet: pkt, Program: prog, Kind: KindRunError, Offset: -1,
			Expected: a.err.Error(), Got: got,
			Detail: fmt.Sprintf("the kernel refused the original (%v) but not the candidate in the same way (%s)", a.err, got),
		})
		return nil
	}
	d.report.Skipped++
	if d.report.SkipReason == "" {
		d.report.SkipReason = fmt.Sprintf("packet %d (%d bytes), program %s: %v", pkt, size, prog, a.err)
	}
	return nil
}

func errnoOf(err error) unix.Errno {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// contextFor builds the input context of one run. The kernel insists that
// an XDP context's data_end equals the packet length, and it copies a
// context out only if one went in, so XDP runs always get one.
func (d *differ) contextFor(prog string, pkt []byte) []byte {
	if d.a.coll.Programs[prog].Type() != ebpf.XDP {
		return d.ctxIn
	}
	c := make([]byte, max(xdpMDSize, len(d.ctxIn)))
	copy(c, d.ctxIn)
	binary.NativeEndian.PutUint32(c[4:8], uint32(len(pkt)))
	return c
}

func (d *differ) addMismatch(m Mismatch) {
	d.report.MismatchCount++
	if len(d.report.Mismatches) < d.maxMismatches {
		d.report.Mismatches = append(d.report.Mismatches, m)
	}
}

// compareRun compares the candidate's run c with the original's a wherever
// the two original runs a and b agree.
func (d *differ) compareRun(pkt int, prog string, a, b, c runResult) {
	typ := d.a.coll.Programs[prog].Type()
	if c.err != nil {
		d.addMismatch(Mismatch{
			Packet: pkt, Program: prog, Kind: KindRunError, Offset: -1,
			Expected: verdictName(typ, a.verdict), Got: c.err.Error(),
			Detail: fmt.Sprintf("candidate run failed (%v), original returned %s", c.err, verdictName(typ, a.verdict)),
		})
		return
	}
	switch {
	case a.verdict != b.verdict:
		d.report.Nondeterministic.Verdicts++
		d.ndPacket = true
		d.seen(locVerdict(prog))
	case c.verdict != a.verdict:
		d.addMismatch(Mismatch{
			Packet: pkt, Program: prog, Kind: KindVerdict, Offset: -1, locs: []string{locVerdict(prog)},
			Expected: verdictName(typ, a.verdict), Got: verdictName(typ, c.verdict),
			Detail: fmt.Sprintf("expected %s, got %s", verdictName(typ, a.verdict), verdictName(typ, c.verdict)),
		})
	}
	if nd := d.compareBuffers(pkt, prog, KindOutput, a.out, b.out, c.out); nd > 0 {
		d.report.Nondeterministic.OutputBytes += nd
	}
	if nd := d.compareBuffers(pkt, prog, KindContext, a.ctx, b.ctx, c.ctx); nd > 0 {
		d.report.Nondeterministic.ContextBytes += nd
	}
}

// compareBuffers records a mismatch of an output or context buffer, or the
// places where the original runs disagreed; it returns the number of
// excluded bytes.
func (d *differ) compareBuffers(pkt int, prog, kind string, a, b, c []byte) int {
	m, diff, ndOffs, nd := compareBytes(a, b, c, kind)
	if m != nil {
		m.Packet, m.Program, m.Kind = pkt, prog, kind
		for _, off := range diff {
			m.locs = append(m.locs, locBytes(kind, prog, off))
		}
		d.addMismatch(*m)
		return 0
	}
	if nd > 0 {
		d.ndPacket = true
		for _, off := range ndOffs {
			d.seen(locBytes(kind, prog, off))
		}
	}
	return nd
}

// compareBytes compares c with a on the bytes where a and b agree. It
// returns a mismatch (without packet, program and kind) and the offsets
// that differ, or the offsets excluded because a and b differ there and
// the number of excluded bytes. If a and b differ in length the whole
// buffer is nondeterministic; length differences use offset -1.
func compareBytes(a, b, c []byte, what string) (m *Mismatch, diff, nd []int, ndCount int) {
	if len(a) != len(b) {
		return nil, nil, []int{-1}, max(len(a), len(b))
	}
	if len(c) != len(a) {
		off := commonPrefix(a, c)
		return &Mismatch{
			Offset:   off,
			Expected: window(a, off),
			Got:      window(c, off),
			Detail: fmt.Sprintf("%s length: expected %d bytes, got %d (first difference at byte %d; showing %s)",
				what, len(a), len(c), off, windowRange(max(len(a), len(c)), off)),
		}, []int{-1}, nil, 0
	}
	for i := range a {
		switch {
		case a[i] != b[i]:
			nd = append(nd, i)
		case c[i] != a[i]:
			diff = append(diff, i)
		}
	}
	if len(diff) == 0 {
		return nil, nil, nd, len(nd)
	}
	first := diff[0]
	return &Mismatch{
		Offset:   first,
		Expected: window(a, first),
		Got:      window(c, first),
		Detail: fmt.Sprintf("%s byte %d: expected %02x, got %02x (%d bytes differ; showing %s)",
			what, first, a[first], c[first], len(diff), windowRange(len(a), first)),
	}, diff, nil, 0
}

func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// window shows up to 32 bytes around off, enough to recognise a header
// field without dumping a whole frame into the report.
func window(b []byte, off int) string {
	lo, hi := windowBounds(len(b), off)
	if lo >= hi {
		return ""
	}
	return hex.EncodeToString(b[lo:hi])
}

func windowBounds(n, off int) (int, int) {
	lo := max(0, off-8)
	return min(lo, n), min(n, lo+32)
}

func windowRange(n, off int) string {
	lo, hi := windowBounds(n, off)
	return fmt.Sprintf("bytes [%d:%d]", lo, hi)
}

// checkMaps snapshots the compared maps (all of them, or with all false
// only the periodic ones) of all three collections and
// compares them. Maps are first compared as raw buffers: when all three
// copies are identical, which is the normal case, no entry is built or
// indexed (this made per-packet checks of the sample NFs' maps about 50
// times cheaper).
func (d *differ) checkMaps(pkt int, all bool) error {
	defer func(start time.Time) { d.report.Timing.Maps += time.Since(start) }(time.Now())
	d.report.MapChecks++
	entries := 0
	var unreadable []string
	for _, name := range d.mapNames {
		if !all && !d.periodic[name] {
			continue
		}
		raws := d.raws[name]
		// raws[1] is the second original's: a periodic check reads it
		// only when the candidate's copy differs from the first
		// original's, the only case in which it decides anything (it
		// tells nondeterminism from a mismatch). The final check and
		// checks after a differing packet read all three.
		// The copies are read side by side (a large hash walks all its
		// buckets); no program runs meanwhile.
		same := false
		err := readAll(raws, []*instance{d.a, d.b, d.c}, name, !all, readCost(d.a.coll.Maps[name], raws[0]) >= parallelReadCost)
		if err == nil && !all {
			if same = sameSorted(raws[0], raws[2]); !same {
				err = raws[1].Read(d.b.coll.Maps[name])
			}
		}
		if errors.Is(err, mapstate.ErrNotIterable) && !d.periodic[name] {
			// Planned without a read (see planMapChecks).
			unreadable = append(unreadable, name)
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: read map %q after packet %d: %w", name, pkt, err)
		}
		if d.periodic == nil || d.periodic[name] {
			// Only the periodic maps decide the interval.
			entries += d.planCost(name, d.a.coll.Maps[name], raws[0])
		}
		if same {
			continue // the candidate's copy equals the first original's
		}
		if raws[0].Equal(raws[1]) && raws[0].Equal(raws[2]) {
			continue
		}
		// Hash maps list their keys in an order of their own: compare
		// sorted before looking at entries.
		for _, r := range raws {
			r.Sort()
		}
		if raws[0].Equal(raws[1]) && raws[0].Equal(raws[2]) {
			continue
		}
		typ := d.a.coll.Maps[name].Type()
		if sameKeys(raws[0], raws[1]) && sameKeys(raws[0], raws[2]) {
			// The common case (values differ, keys do not: a clock
			// in every value of the DDoS filter's rate table):
			// compared in step, no entries built or indexed.
			d.compareSorted(pkt, name, typ, raws[0], raws[1], raws[2])
			continue
		}
		// The entries share buffers that the next check overwrites;
		// compareMap keeps nothing of them (mismatches copy keys and
		// render values as strings).
		d.compareMap(pkt, name, typ, raws[0].Map(), raws[1].Map(), raws[2].Map())
	}
	if len(unreadable) > 0 {
		d.report.SkippedMaps = append(d.report.SkippedMaps, unreadable...)
		slices.Sort(d.report.SkippedMaps)
		d.mapNames = slices.DeleteFunc(d.mapNames, func(n string) bool { return slices.Contains(unreadable, n) })
	}
	// Maps that grew past the automatic limit are compared at the end
	// only from now on.
	if d.auto && d.every > 0 && entries > AutoMapCheckEntries {
		d.report.MapCheck = fmt.Sprintf("%s up to packet %d, then end (maps grew to %d entries, weighted by read cost)", describeInterval(d.every), pkt, entries)
		d.every = 0
	}
	return nil
}

// parallelReadCost is the read cost (see readCost) from which readAll
// reads the copies of a map concurrently: waking a second thread costs
// more than reading a small map (reading the router's per-CPU counters
// after every packet got ten times slower on a busy machine).
const parallelReadCost = 1024

// readAll reads map name of every instance into raws (raws[i] from
// insts[i]), concurrently if parallel; with skipSecond the second
// (raws[1]) is left out.
func readAll(raws *[3]*mapstate.Raw, insts []*instance, name string, skipSecond, parallel bool) error {
	if !parallel {
		for i := range raws {
			if i == 1 && skipSecond {
				continue
			}
			if err := raws[i].Read(insts[i].coll.Maps[name]); err != nil {
				return err
			}
		}
		return nil
	}
	var errs [3]error
	var wg sync.WaitGroup
	for i := range raws {
		if i == 1 && skipSecond {
			continue
		}
		if i == 0 {
			continue // read by the caller's goroutine below
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = raws[i].Read(insts[i].coll.Maps[name])
		}()
	}
	errs[0] = raws[0].Read(insts[0].coll.Maps[name])
	wg.Wait()
	return errors.Join(errs[:]...)
}

// sameSorted reports whether a and c hold the same entries, sorting both
// if their raw buffers differ (hash maps list keys in an order of their
// own).
func sameSorted(a, c *mapstate.Raw) bool {
	if a.Equal(c) {
		return true
	}
	a.Sort()
	c.Sort()
	return a.Equal(c)
}

// sameKeys reports whether sorted snapshots a and o hold the same keys
// with values of the same shape.
func sameKeys(a, o *mapstate.Raw) bool {
	return a.N == o.N && a.KeySize == o.KeySize && a.ValueSize == o.ValueSize && a.CPUs == o.CPUs &&
		a.PerCPU == o.PerCPU && bytes.Equal(a.Keys, o.Keys)
}

// compareSorted is compareMap for sorted snapshots with the same keys
// (see sameKeys): it compares the values entry by entry in key order, as
// compareMap does, skipping the entries equal in all three.
func (d *differ) compareSorted(pkt int, name string, typ ebpf.MapType, a, b, c *mapstate.Raw) {
	perCPU := mapstate.PerCPU(typ)
	for i := range a.N {
		va, vb, vc := a.Value(i), b.Value(i), c.Value(i)
		if bytes.Equal(va, vb) && bytes.Equal(va, vc) {
			continue
		}
		d.compareValues(pkt, name, a.Key(i), perCPU, rawValues(a, va), rawValues(b, vb), rawValues(c, vc))
	}
}

// rawValues splits an entry's value of r into its CPUs' values, as
// values does for an entry of r.Map().
func rawValues(r *mapstate.Raw, v []byte) [][]byte {
	if !r.PerCPU {
		return [][]byte{v}
	}
	out := make([][]byte, r.CPUs)
	for c := range r.CPUs {
		out[c] = v[c*r.ValueSize : (c+1)*r.ValueSize : (c+1)*r.ValueSize]
	}
	return out
}

// compareMap compares one map's snapshots: a and b of the two originals, c
// of the candidate.
func (d *differ) compareMap(pkt int, name string, typ ebpf.MapType, a, b, c *mapstate.Map) {
	ia, ib, ic := index(a), index(b), index(c)
	keys := make([]string, 0, len(ia)+len(ic))
	ndKeys := false
	for k := range ia {
		keys = append(keys, k)
		if _, ok := ib[k]; !ok {
			ndKeys = true
		}
	}
	for k := range ib {
		if _, ok := ia[k]; !ok {
			ndKeys = true
			keys = append(keys, k)
		}
	}
	for k := range ic {
		_, inA := ia[k]
		_, inB := ib[k]
		if !inA && !inB {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	perCPU := mapstate.PerCPU(typ)
	for _, k := range keys {
		ea, inA := ia[k]
		eb, inB := ib[k]
		ec, inC := ic[k]
		switch {
		case inA != inB, !inA && ndKeys:
			// The originals disagree on this key, or on some keys and
			// the candidate has one more: the key set depends on
			// nondeterministic input.
			d.ndKey(name, k)
		case !inA && inC:
			d.mapMismatch(pkt, name, []byte(k), nil, -1, Mismatch{
				locs:   []string{locKeySet(name)},
				Got:    valuesHex(ec),
				Detail: fmt.Sprintf("unexpected entry in candidate (value %s)", valuesHex(ec)),
			})
		case inA && !inC:
			d.mapMismatch(pkt, name, []byte(k), nil, -1, Mismatch{
				locs:     []string{locKeySet(name)},
				Expected: valuesHex(ea),
				Detail:   fmt.Sprintf("entry missing in candidate (original value %s)", valuesHex(ea)),
			})
		case inA && inC:
			d.compareValues(pkt, name, []byte(k), perCPU, values(ea), values(eb), values(ec))
		}
	}
}

func (d *differ) compareValues(pkt int, name string, key []byte, perCPU bool, va, vb, vc [][]byte) {
	if len(va) != len(vc) || len(va) != len(vb) {
		d.mapMismatch(pkt, name, key, nil, -1, Mismatch{
			Detail: fmt.Sprintf("value count differs: original %d, candidate %d", len(va), len(vc)),
		})
		return
	}
	for cpu := range va {
		a, b, c := va[cpu], vb[cpu], vc[cpu]
		if len(a) != len(c) || len(a) != len(b) {
			d.mapMismatch(pkt, name, key, cpuOf(perCPU, cpu), -1, Mismatch{
				Expected: hex.EncodeToString(a), Got: hex.EncodeToString(c),
				Detail: fmt.Sprintf("value size differs: original %d, candidate %d", len(a), len(c)),
			})
			continue
		}
		mask := ndMask(a, b)
		first := -1
		var locs []string
		for i := range a {
			if mask != nil && mask[i] {
				d.ndByte(name, key, cpu, i)
				continue
			}
			if c[i] != a[i] {
				if first < 0 {
					first = i
				}
				locs = append(locs, locMapByte(name, key, cpu, i))
			}
		}
		if first < 0 {
			continue
		}
		d.mapMismatch(pkt, name, key, cpuOf(perCPU, cpu), first, Mismatch{
			locs:     locs,
			Expected: valueHex(a, first), Got: valueHex(c, first),
			Detail: fmt.Sprintf("value byte %d: expected %02x, got %02x; value expected %s, got %s",
				first, a[first], c[first], valueHex(a, first), valueHex(c, first)),
		})
	}
}

// mapMismatch records a map difference the first time it is seen for an
// entry (and CPU): a wrong counter stays wrong on every later check.
func (d *differ) mapMismatch(pkt int, name string, key []byte, cpu *int, off int, m Mismatch) {
	id := fmt.Sprintf("%s\x00%x", name, key)
	if cpu != nil {
		id += fmt.Sprintf("\x00%d", *cpu)
	}
	if _, ok := d.reported[id]; ok {
		return
	}
	d.reported[id] = struct{}{}
	m.Packet, m.Kind, m.Map, m.Key, m.CPU, m.Offset = pkt, KindMap, name, bytes.Clone(key), cpu, off
	d.addMismatch(m)
}

func (d *differ) ndKey(name, key string) {
	d.seen(locKeySet(name))
	if d.seen(locKey(name, key)) {
		d.report.Nondeterministic.MapKeys++
		d.ndPacket = true
	}
}

func (d *differ) ndByte(name string, key []byte, cpu, off int) {
	d.locBuf = appendLocMapByte(d.locBuf[:0], name, key, cpu, off)
	if _, ok := d.ndLoc[string(d.locBuf)]; ok {
		return
	}
	d.ndLoc[string(d.locBuf)] = struct{}{}
	d.report.Nondeterministic.MapBytes++
	d.ndPacket = true
}

func cpuOf(perCPU bool, cpu int) *int {
	if !perCPU {
		return nil
	}
	return &cpu
}

// littleEndian is the host byte order, which map values are stored in.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// ndMask marks the bytes of a map value that are nondeterministic: those in
// which the two original runs differ and, within each naturally aligned
// 64-bit word, every less significant byte. A clock or counter read by the
// candidate between the two original runs agrees with them above their
// first differing byte but may differ anywhere below it. Nil means a and b
// are equal.
func ndMask(a, b []byte) []bool {
	var mask []bool
	for w := 0; w < len(a); w += 8 {
		end := min(w+8, len(a))
		lo, hi := -1, -1
		for i := w; i < end; i++ {
			if a[i] != b[i] {
				if lo < 0 {
					lo = i
				}
				hi = i
			}
		}
		if lo < 0 {
			continue
		}
		if mask == nil {
			mask = make([]bool, len(a))
		}
		from, to := w, hi+1
		if !littleEndian {
			from, to = lo, end
		}
		for i := from; i < to; i++ {
			mask[i] = true
		}
	}
	return mask
}

func index(m *mapstate.Map) map[string]*mapstate.Entry {
	idx := make(map[string]*mapstate.Entry, len(m.Entries))
	for i := range m.Entries {
		idx[string(m.Entries[i].Key)] = &m.Entries[i]
	}
	return idx
}

func values(e *mapstate.Entry) [][]byte {
	if e.Values != nil {
		out := make([][]byte, len(e.Values))
		for i, v := range e.Values {
			out[i] = v
		}
		return out
	}
	return [][]byte{e.Value}
}

func valuesHex(e *mapstate.Entry) string {
	if e.Values == nil {
		return valueHex(e.Value, 0)
	}
	s := "["
	for i, v := range e.Values {
		if i > 0 {
			s += " "
		}
		s += valueHex(v, 0)
	}
	return s + "]"
}

// valueHex shows a map value whole when it is small and a window around
// off otherwise.
func valueHex(v []byte, off int) string {
	if len(v) <= 32 {
		return hex.EncodeToString(v)
	}
	return window(v, off)
}

// verdictName names a program's return value.
func verdictName(typ ebpf.ProgramType, v uint32) string {
	var names []string
	switch typ {
	case ebpf.XDP:
		names = []string{"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"}
	case ebpf.SchedCLS, ebpf.SchedACT:
		if v == 0xffffffff {
			return "TC_ACT_UNSPEC (-1)"
		}
		names = []string{"TC_ACT_OK", "TC_ACT_RECLASSIFY", "TC_ACT_SHOT", "TC_ACT_PIPE", "TC_ACT_STOLEN",
			"TC_ACT_QUEUED", "TC_ACT_REPEAT", "TC_ACT_REDIRECT", "TC_ACT_TRAP"}
	}
	if int(v) < len(names) {
		return fmt.Sprintf("%s (%d)", names[v], v)
	}
	return fmt.Sprintf("%d", int32(v))
}
