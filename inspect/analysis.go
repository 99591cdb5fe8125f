package inspect

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// Analysis is what the optimizer's analysis finds in one program: every
// map access site and, per map, whether the data plane writes it. Field
// names are part of the stable JSON output.
type Analysis struct {
	Sites []Site      `json:"sites"`
	Maps  []MapAccess `json:"maps"`
}

// Site is one map access site.
type Site struct {
	ID int `json:"id"`
	// Where is func:bBLOCK:INDEX in the program model.
	Where string `json:"where"`
	// Kind is lookup, update, delete, ..., load, store, atomic or
	// value_helper; Helper names the helper of helper sites.
	Kind   string `json:"kind"`
	Helper string `json:"helper,omitempty"`
	Map    string `json:"map"`
	Write  bool   `json:"write"`
	// Key is the key operand: location, stack offset and one entry per
	// byte (const with its value, packet with its offset, or unknown).
	Key *analysis.Operand `json:"key,omitempty"`
	// KeyBytes counts the key's bytes by kind.
	KeyBytes *ByteCounts `json:"key_bytes,omitempty"`
	// Access is the value range a load, store or atomic site touches,
	// "OFF:SIZE" ("?" for unknown parts).
	Access string `json:"access,omitempty"`
	// Reads and Writes are the value ranges read and written through the
	// pointer a lookup returned, "OFF:SIZE", sorted and deduplicated.
	Reads  []string `json:"reads,omitempty"`
	Writes []string `json:"writes,omitempty"`
	// Escapes are the uses of the returned pointer the analysis does not
	// follow to fixed offsets.
	Escapes []string `json:"escapes,omitempty"`
	// Eligible says, per pass family, whether the site may be rewritten
	// and if not why.
	Eligible map[string]analysis.Eligibility `json:"eligible"`
}

// ByteCounts counts key bytes by what the analysis knows about them.
type ByteCounts struct {
	Const   int `json:"const"`
	Packet  int `json:"packet"`
	Unknown int `json:"unknown"`
}

// MapAccess is one map as the program uses it.
type MapAccess struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Access is RO (only the control plane writes it), RW (the data
	// plane writes it) or RW? (a pointer to it was lost: data-plane
	// writes may exist that no site shows).
	Access     string   `json:"access"`
	Sites      int      `json:"sites"`
	WriteSites []int    `json:"write_sites,omitempty"`
	Reasons    []string `json:"reasons,omitempty"`
}

// Eligibility keys of Site.Eligible: the pass families the analysis
// decides for.
const (
	EligInline   = "inline"    // mapinline, dss: rewrite the lookup from the map's contents
	EligHotCache = "hotcache"  // cache hot keys in front of the lookup
	EligConstKey = "const_key" // the key is a constant
)

func analyse(spec *ebpf.CollectionSpec, p *program.Program) (*Analysis, error) {
	res, err := analysis.Analyze(spec, p, analysis.Options{})
	if err != nil {
		return nil, err
	}
	out := &Analysis{Sites: []Site{}, Maps: []MapAccess{}}
	for _, s := range res.Sites {
		row := Site{
			ID: s.ID, Where: fmt.Sprintf("%s:b%d:%d", s.Func, s.Block, s.Index), Kind: string(s.Kind),
			Helper: s.Helper, Map: s.Map, Write: s.Write, Key: s.Key, Escapes: s.Escapes,
			Eligible: map[string]analysis.Eligibility{EligInline: s.Inline, EligHotCache: s.HotCache, EligConstKey: s.ConstKey},
		}
		if s.Key != nil {
			c := &ByteCounts{}
			for _, b := range s.Key.Bytes {
				switch b.Kind {
				case "const":
					c.Const++
				case "packet":
					c.Packet++
				default:
					c.Unknown++
				}
			}
			if len(s.Key.Bytes) == 0 {
				c.Unknown = s.Key.Size
			}
			row.KeyBytes = c
		}
		switch s.Kind {
		case analysis.SiteLoad, analysis.SiteStore, analysis.SiteAtomic, analysis.SiteValueHelper:
			row.Access = rangeString(s.Offset, s.OffsetKnown, s.Size)
		}
		row.Reads = ranges(s.Reads)
		row.Writes = ranges(s.Writes)
		out.Sites = append(out.Sites, row)
	}
	names := make([]string, 0, len(res.Maps))
	for n := range res.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		mi := res.Maps[n]
		access := mi.Access()
		out.Maps = append(out.Maps, MapAccess{Name: n, Type: mi.Type, Access: access, Sites: len(mi.Sites), WriteSites: mi.WriteSites, Reasons: mi.Reasons})
	}
	return out, nil
}

func rangeString(off int64, known bool, size int) string {
	o, s := "?", "?"
	if known {
		o = fmt.Sprint(off)
	}
	if size >= 0 {
		s = fmt.Sprint(size)
	}
	return o + ":" + s
}

func ranges(acc []analysis.Access) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range acc {
		r := rangeString(a.Offset, a.OffsetKnown, a.Size)
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out
}

// writeAnalysis prints one program's sites, the reasons its lookups are
// not eligible, and its maps.
func writeAnalysis(w io.Writer, name string, a *Analysis) error {
	fmt.Fprintf(w, "Program %s: map access sites (key bytes: hex = constant, pN = packet byte N, p = packet, ? = unknown)\n", name)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWHERE\tKIND\tMAP\tKEY / ACCESS\tC/P/?\tVALUE READS\tESCAPES\tINLINE\tHOTCACHE\tCONSTKEY")
	for _, s := range a.Sites {
		kind := s.Kind
		if s.Helper != "" && s.Kind != string(analysis.SiteValueHelper) {
			kind = s.Kind + " (" + strings.TrimPrefix(s.Helper, "Fn") + ")"
		}
		key, counts := dash(s.Access), "-"
		if s.Key != nil {
			key = s.Key.String()
			counts = fmt.Sprintf("%d/%d/%d", s.KeyBytes.Const, s.KeyBytes.Packet, s.KeyBytes.Unknown)
		}
		reads := dash(strings.Join(s.Reads, " "))
		if len(s.Writes) > 0 {
			reads += " (writes " + strings.Join(s.Writes, " ") + ")"
		}
		esc := "-"
		if len(s.Escapes) > 0 {
			esc = fmt.Sprint(len(s.Escapes))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Where, kind, dash(s.Map), key, counts, reads, esc,
			yesNo(s.Eligible[EligInline]), yesNo(s.Eligible[EligHotCache]), yesNo(s.Eligible[EligConstKey]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Reasons only for helper sites: a load or a store is never a rewrite
	// candidate itself, its lookup is.
	var why []string
	for _, s := range a.Sites {
		if s.Helper == "" || s.Kind == string(analysis.SiteValueHelper) {
			continue
		}
		for _, k := range []string{EligInline, EligHotCache} {
			if e := s.Eligible[k]; !e.OK {
				why = append(why, fmt.Sprintf("  %d %s: %s", s.ID, k, strings.Join(e.Reasons, "; ")))
			}
		}
		for _, e := range s.Escapes {
			why = append(why, fmt.Sprintf("  %d escape: %s", s.ID, e))
		}
	}
	if len(why) > 0 {
		fmt.Fprintln(w, "Not eligible:")
		for _, l := range why {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAP\tTYPE\tACCESS\tSITES\tWRITE SITES\tWHY NOT RO")
	for _, m := range a.Maps {
		ws := "-"
		if len(m.WriteSites) > 0 {
			ws = strings.Trim(fmt.Sprint(m.WriteSites), "[]")
		}
		why := "-"
		if len(m.Reasons) > 0 {
			why = m.Reasons[0]
			if len(m.Reasons) > 1 {
				why += fmt.Sprintf(" (+%d more, see --json)", len(m.Reasons)-1)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", m.Name, dash(m.Type), m.Access, m.Sites, ws, why)
	}
	return tw.Flush()
}

func yesNo(e analysis.Eligibility) string {
	if e.OK {
		return "yes"
	}
	return "no"
}
