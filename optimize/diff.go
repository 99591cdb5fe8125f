package optimize

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/morpheus-go/morpheus/passes"
)

// listing is a program listing (program.Program.String) split into
// functions and blocks.
type listing struct {
	funcs []*listFunc
	byFn  map[string]*listFunc
}

type listFunc struct {
	name   string
	order  []string // block labels in layout order
	blocks map[string][]string
}

func parseListing(s string) *listing {
	l := &listing{byFn: map[string]*listFunc{}}
	var f *listFunc
	var label string
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, "func ") && strings.HasSuffix(line, ":"):
			f = &listFunc{name: strings.TrimSuffix(strings.TrimPrefix(line, "func "), ":"), blocks: map[string][]string{}}
			l.funcs = append(l.funcs, f)
			l.byFn[f.name] = f
			label = ""
		case f != nil && line != "" && !strings.HasPrefix(line, "\t") && strings.HasSuffix(line, ":"):
			label = strings.TrimSuffix(line, ":")
			f.order = append(f.order, label)
			f.blocks[label] = []string{}
		case f != nil && label != "" && strings.HasPrefix(line, "\t"):
			f.blocks[label] = append(f.blocks[label], strings.TrimPrefix(line, "\t"))
		}
	}
	return l
}

// WriteDiff writes an annotated before/after listing of what the passes
// changed in the program, like compiler optimization remarks: per
// function, every block that a pass rewrote, removed or added, each under
// the remarks of the passes that touched it. Unchanged blocks are left
// out. Remarks about sites a pass left alone are listed per function at
// the end, so the reader also sees why a site was not rewritten.
func (pr *ProgramReport) WriteDiff(w io.Writer) error {
	bl, al := pr.Listings()
	if bl == "" {
		_, err := fmt.Fprintf(w, "program %s: no listing (%s)\n", pr.Program, pr.Reason)
		return err
	}
	before, after := parseListing(bl), parseListing(al)
	if al == "" {
		after = before
	}
	applied := map[string]map[string][]passes.Remark{} // func -> block label -> remarks
	skipped := map[string][]passes.Remark{}
	for _, r := range pr.Remarks {
		if !r.Applied {
			skipped[r.Func] = append(skipped[r.Func], r)
			continue
		}
		if applied[r.Func] == nil {
			applied[r.Func] = map[string][]passes.Remark{}
		}
		label := ""
		if r.Block >= 0 {
			label = "b" + strconv.Itoa(r.Block)
		}
		applied[r.Func][label] = append(applied[r.Func][label], r)
	}

	var names []string
	for _, f := range before.funcs {
		names = append(names, f.name)
	}
	for _, f := range after.funcs {
		if before.byFn[f.name] == nil {
			names = append(names, f.name)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "program %s: %d -> %d instructions\n", pr.Program, pr.InstructionsBefore, pr.InstructionsAfter)
	changed := false
	for _, name := range names {
		bf, af := before.byFn[name], after.byFn[name]
		if writeFuncDiff(&b, name, bf, af, applied[name], skipped[name]) {
			changed = true
		}
	}
	if !changed {
		b.WriteString("  no changes\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeFuncDiff writes one function's changed blocks and reports whether
// there were any (or any remark to show).
func writeFuncDiff(b *strings.Builder, name string, bf, af *listFunc, applied map[string][]passes.Remark, skipped []passes.Remark) bool {
	var out strings.Builder
	remark := func(prefix string, rs []passes.Remark) {
		for _, r := range rs {
			m := ""
			if r.Map != "" {
				m = " [map " + r.Map + "]"
			}
			fmt.Fprintf(&out, "  %s %s%s: %s\n", prefix, r.Pass, m, r.Message)
		}
	}
	block := func(sign string, lines []string) {
		for _, l := range lines {
			fmt.Fprintf(&out, "  %s     %s\n", sign, l)
		}
	}
	switch {
	case bf == nil:
		fmt.Fprintf(&out, "func %s: added\n", name)
	case af == nil:
		fmt.Fprintf(&out, "func %s: removed\n", name)
	default:
		fmt.Fprintf(&out, "func %s:\n", name)
	}
	remark("@", applied[""])
	shown := map[string]bool{}
	some := len(applied[""]) > 0
	if bf != nil {
		for _, label := range bf.order {
			old := bf.blocks[label]
			var now []string
			present := false
			if af != nil {
				now, present = af.blocks[label]
			}
			if present && slices.Equal(old, now) && len(applied[label]) == 0 {
				continue
			}
			some, shown[label] = true, true
			switch {
			case !present:
				fmt.Fprintf(&out, "  %s: removed\n", label)
				remark("@", applied[label])
				block("-", old)
			case slices.Equal(old, now):
				fmt.Fprintf(&out, "  %s: instructions unchanged\n", label)
				remark("@", applied[label])
			default:
				fmt.Fprintf(&out, "  %s:\n", label)
				remark("@", applied[label])
				for _, l := range withContext(lineDiff(old, now), diffContext) {
					fmt.Fprintf(&out, "  %s\n", l)
				}
			}
		}
	}
	if af != nil {
		for _, label := range af.order {
			if shown[label] || (bf != nil && bf.blocks[label] != nil) {
				continue
			}
			some = true
			fmt.Fprintf(&out, "  %s: new\n", label)
			remark("@", applied[label])
			block("+", af.blocks[label])
		}
	}
	if len(skipped) > 0 {
		out.WriteString("  not rewritten:\n")
		for _, l := range GroupRemarks(skipped, false) {
			fmt.Fprintf(&out, "    %s\n", l)
		}
		some = true
	}
	if some {
		b.WriteString(out.String())
	}
	return some
}

// lineDiff renders the lines of a changed block: kept lines with two
// spaces, removed with "-", added with "+", aligned on their longest
// common subsequence (blocks are short, so the quadratic table is cheap).
func lineDiff(a, b []string) []string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			out = append(out, "      "+a[i])
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			out = append(out, "+     "+b[j])
			j++
		default:
			out = append(out, "-     "+a[i])
			i++
		}
	}
	return out
}

// diffContext is how many unchanged lines are shown around a change.
const diffContext = 2

// withContext keeps the changed lines of a line diff and up to n
// unchanged lines around each, folding longer unchanged runs.
func withContext(lines []string, n int) []string {
	changed := func(l string) bool { return l[0] == '+' || l[0] == '-' }
	keep := make([]bool, len(lines))
	for i, l := range lines {
		if !changed(l) {
			continue
		}
		for j := max(0, i-n); j <= min(len(lines)-1, i+n); j++ {
			keep[j] = true
		}
	}
	var out []string
	for i := 0; i < len(lines); {
		if keep[i] {
			out = append(out, lines[i])
			i++
			continue
		}
		j := i
		for j < len(lines) && !keep[j] {
			j++
		}
		out = append(out, fmt.Sprintf("      ... %d unchanged", j-i))
		i = j
	}
	return out
}

// GroupRemarks renders remarks one per line in their order, except that
// remarks of one pass and function with the same map, verdict and message
// (a per-CPU counter map skipped at twenty sites) share a line that lists
// their blocks. withVerdict prefixes "applied" or "skipped".
func GroupRemarks(rs []passes.Remark, withVerdict bool) []string {
	type key struct {
		pass, fn, m, msg string
		applied          bool
	}
	var order []key
	where := map[key][]string{}
	for _, r := range rs {
		k := key{r.Pass, r.Func, r.Map, r.Message, r.Applied}
		if _, ok := where[k]; !ok {
			order = append(order, k)
		}
		if r.Block >= 0 {
			where[k] = append(where[k], "b"+strconv.Itoa(r.Block))
		} else {
			where[k] = append(where[k], "")
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		var sb strings.Builder
		if withVerdict {
			if k.applied {
				sb.WriteString("applied ")
			} else {
				sb.WriteString("skipped ")
			}
			fmt.Fprintf(&sb, "%-10s %s", k.pass, k.fn)
		} else {
			sb.WriteString(k.pass)
		}
		if bs := strings.TrimSpace(strings.Join(where[k], " ")); bs != "" {
			sb.WriteString(" " + bs)
		}
		if k.m != "" {
			sb.WriteString(" [map " + k.m + "]")
		}
		sb.WriteString(": " + k.msg)
		out = append(out, sb.String())
	}
	return out
}
