// Package passes holds the optimization passes and the table that runs
// them, in the manner of the Go compiler's SSA backend: one file per pass,
// one table that states their order.
//
// Every pass works on a lifted program (package program) and may only make
// rewrites that the analysis (package analysis) proves safe for the map
// contents in the Context, or that it protects with a guard. What a pass
// does not understand it leaves alone and reports as a remark.
package passes

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// A Pass is one step of the pipeline.
type Pass struct {
	Name string
	// Doc says what the pass does, for `morpheus optimize --help`.
	Doc string
	fn  func(*Context) error
}

// Table is the pipeline, in order. The order matters: inlining runs before
// caching so that a map inlined whole is not also cached; taildup runs
// after the map rewrites, whose compare chains and hot caches make the
// merges it splits, and right before constprop, which folds the copies
// (taildup runs only when constprop does); constprop runs after the map
// rewrites so that it folds the values they expose, and dce runs after
// them to remove what folding and the rewrites left dead; storemerge goes
// last, on the key stores that remain.
var Table = []Pass{
	{Name: "mapinline", Doc: "inline small read-only hash and LPM maps as guarded compare chains or (hashes, by cost) a hashed probe into a frozen table; constant lookups in single-element arrays become direct value pointers", fn: mapInline},
	{Name: "dss", Doc: "specialize large read-only tables by a cost model: IPv4 LPM tries become DIR-16-8-8 arrays, LPM tries with a dominant prefix length become hashes on the masked key (with short chains and hot keys), dense integer-keyed hashes become arrays; behind a guard", fn: dataStructSpec},
	{Name: "hotcache", Doc: "compile the hottest keys of large tables in front of the lookup, behind a guard; where the value is written, hits run a copy of the code after the lookup that redoes it before any write", fn: hotCache},
	{Name: "taildup", Doc: "duplicate the tail after a merge of known values (the hits of a compare chain or hot cache) per predecessor, with the static functions it calls, so that constprop folds each copy; bounded, runs only with constprop", fn: tailDup},
	{Name: "constprop", Doc: "fold .rodata and control-plane-only array values (behind a guard with an original fallback), constant arithmetic and decided branches", fn: constProp},
	{Name: "dce", Doc: "remove unreachable blocks and functions, dead register definitions and unused pure lookups; thread jumps and merge blocks", fn: deadCode},
	{Name: "storemerge", Doc: "write lookup keys to the stack as whole 64-bit words instead of field by field, so that the helper's hash or a probe reading the key in words does not stall on store forwarding", fn: storeMerge},
}

// Options tunes the passes.
type Options struct {
	// MaxInline is the largest number of entries a map may have to be
	// inlined whole.
	MaxInline int
	// TopK is the most hot keys hotcache (and dss) compile in front of a
	// lookup; their cost models pick how many pay off. Compare chains
	// and search trees take at most 64 of them, hashed probes up to 1024.
	TopK int
	// Passes names the passes to run; nil means all of them.
	Passes []string
	// Ingress is the ifindex of the one device an XDP program is
	// attached to, 0 if unknown. constprop then folds what the program
	// derives from ctx->ingress_ifindex (per-port configuration),
	// behind a check at entry that sends frames from any other
	// interface to the unmodified original code.
	Ingress uint32
}

// DefaultOptions are the settings used when none are given.
func DefaultOptions() Options {
	return Options{MaxInline: 64, TopK: 1024}
}

// ParsePassList validates a comma-separated list of pass names. "none"
// selects no pass (the program only goes through lift and lower).
func ParsePassList(list string) ([]string, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, nil
	}
	if list == "none" {
		return []string{}, nil
	}
	var names []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.ContainsFunc(Table, func(p Pass) bool { return p.Name == n }) {
			var known []string
			for _, p := range Table {
				known = append(known, p.Name)
			}
			return nil, fmt.Errorf("unknown pass %q (known: %s, or none)", n, strings.Join(known, ", "))
		}
		names = append(names, n)
	}
	return names, nil
}

// Remark records one decision of a pass: a rewrite it made or a site it
// left alone and why. Remarks are the optimizer's equivalent of compiler
// optimization remarks.
type Remark struct {
	Pass    string `json:"pass"`
	Func    string `json:"func"`
	Block   int    `json:"block"`
	Map     string `json:"map,omitempty"`
	Applied bool   `json:"applied"`
	Message string `json:"message"`
}

func (r Remark) String() string {
	verb := "skipped"
	if r.Applied {
		verb = "applied"
	}
	m := ""
	if r.Map != "" {
		m = " map " + r.Map
	}
	return fmt.Sprintf("%s: %s b%d%s: %s: %s", r.Pass, r.Func, r.Block, m, verb, r.Message)
}

// PassResult is what one pass did.
type PassResult struct {
	Name     string        `json:"name"`
	Changes  int           `json:"changes"`
	Duration time.Duration `json:"duration_ns"`
}

// Context is the state a pipeline run works on.
type Context struct {
	// Coll is the collection the program belongs to. Passes add the maps
	// they need (value caches, the guard table) to its Maps.
	Coll *ebpf.CollectionSpec
	// Prog is the program being optimized; passes edit it in place.
	Prog *program.Program
	// State is the snapshot of map contents the rewrites are specialized to.
	State *mapstate.State
	// Heat gives the hot keys per map, for hotcache.
	Heat *heatmap.Heatmap
	// Guards assigns guard slots and versions to guarded maps.
	Guards *guard.Table
	Opts   Options

	Remarks []Remark
	Results []PassResult

	// unduplicated is the program as it was before taildup copied
	// tails, for constprop's guarded fallback; nil when taildup changed
	// nothing.
	unduplicated *program.Program
	// frozen is taildup's last analysis (frozen maps, .rodata constants)
	// of the program as it left it, which constprop's first round would
	// compute again; Run drops it after any other pass.
	frozen *analysis.Result

	// wideReads are the stack slots (offsets from R10) that code a pass
	// emitted loads as one 8-byte word: a probe's or search tree's key
	// chunk. storemerge merges the stores that build them.
	wideReads map[int16]bool

	pass     string
	changes  int
	analysis *analysis.Result
	cacheSeq int
}

// Analysis returns the analysis of the current program, computing it if a
// pass changed the program since the last call.
func (c *Context) Analysis() (*analysis.Result, error) {
	if c.analysis != nil {
		return c.analysis, nil
	}
	res, err := analysis.Analyze(c.Coll, c.Prog, analysis.Options{})
	if err != nil {
		return nil, err
	}
	c.analysis = res
	return res, nil
}

// readsWide records that emitted code loads the key at key as chunks chs;
// the 8-byte chunks of a key on the function's own stack go to wideReads.
func (c *Context) readsWide(key keyAddr, chs []keyChunk) {
	if key.reg != asm.R10 {
		return
	}
	for _, ch := range chs {
		if ch.size == asm.DWord {
			if c.wideReads == nil {
				c.wideReads = map[int16]bool{}
			}
			c.wideReads[key.off+int16(ch.off)] = true
		}
	}
}

// changed records an applied rewrite and invalidates the analysis.
func (c *Context) changed(fn string, block int, mapName, format string, args ...any) {
	c.changes++
	c.analysis = nil
	c.Remarks = append(c.Remarks, Remark{Pass: c.pass, Func: fn, Block: block, Map: mapName, Applied: true, Message: fmt.Sprintf(format, args...)})
}

// skipped records a site a pass chose not to rewrite.
func (c *Context) skipped(fn string, block int, mapName, format string, args ...any) {
	c.Remarks = append(c.Remarks, Remark{Pass: c.pass, Func: fn, Block: block, Map: mapName, Message: fmt.Sprintf(format, args...)})
}

// Run executes the selected passes in table order.
func Run(c *Context) error {
	selected := c.Opts.Passes
	for _, p := range Table {
		if selected != nil && !slices.Contains(selected, p.Name) {
			continue
		}
		c.pass, c.changes = p.Name, 0
		start := time.Now()
		if err := p.fn(c); err != nil {
			return fmt.Errorf("pass %s: %w", p.Name, err)
		}
		if p.Name != "taildup" {
			c.frozen = nil
		}
		c.Results = append(c.Results, PassResult{Name: p.Name, Changes: c.changes, Duration: time.Since(start)})
	}
	return nil
}
