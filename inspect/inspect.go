// Package inspect describes a BPF object the way `morpheus inspect` shows
// it: its programs with their shape in the program model, its maps, and the
// map access sites the analysis finds.
package inspect

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/program"
)

// Report is the description of one object. Field names are part of the
// stable JSON output.
type Report struct {
	Object   string    `json:"object"`
	Programs []Program `json:"programs"`
	Maps     []Map     `json:"maps"`
}

// Program describes one program of the object.
type Program struct {
	Name         string     `json:"name"`
	Type         string     `json:"type"`
	Section      string     `json:"section"`
	AttachType   string     `json:"attach_type,omitempty"`
	AttachTo     string     `json:"attach_to,omitempty"`
	Instructions int        `json:"instructions"`
	Functions    []Function `json:"functions"`
	Blocks       int        `json:"blocks"`
	// LiftError is set when the program model cannot represent the
	// program; the optimizer leaves such programs alone.
	LiftError string `json:"lift_error,omitempty"`
	// Analysis is the optimizer's view of the program's map accesses;
	// AnalysisError says why there is none.
	Analysis      *Analysis `json:"analysis,omitempty"`
	AnalysisError string    `json:"analysis_error,omitempty"`
}

// Function is one BPF function of a program.
type Function struct {
	Name         string `json:"name"`
	Blocks       int    `json:"blocks"`
	Instructions int    `json:"instructions"`
}

// Map describes one map of the object.
type Map struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	Flags      uint32 `json:"flags"`
	KeyType    string `json:"key_type,omitempty"`
	ValueType  string `json:"value_type,omitempty"`
	// Initialized is true for maps whose contents the object defines
	// (global data sections, statically filled prog arrays).
	Initialized bool `json:"initialized,omitempty"`
}

// Options selects what to describe.
type Options struct {
	// Program limits the report to one program; empty means all.
	Program string
}

// ErrNoProgram is returned when Options.Program names no program.
var ErrNoProgram = errors.New("no such program")

// LoadSpec reads an ELF object and turns the library's errors into ones
// that say what is wrong with the file.
func LoadSpec(path string) (*ebpf.CollectionSpec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read object: %w", err)
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "\x7fELF" {
		return nil, fmt.Errorf("%s is not an ELF file: expected a BPF object built by clang -target bpf", path)
	}
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("%s is not a loadable BPF object: %w", path, err)
	}
	if len(spec.Programs) == 0 {
		return nil, fmt.Errorf("%s contains no BPF programs", path)
	}
	return spec, nil
}

// Describe builds the report for a loaded collection spec.
func Describe(name string, spec *ebpf.CollectionSpec, opts Options) (*Report, error) {
	r := &Report{Object: name}
	for _, pname := range sortedNames(spec.Programs) {
		if opts.Program != "" && pname != opts.Program {
			continue
		}
		r.Programs = append(r.Programs, describeProgram(spec, spec.Programs[pname]))
	}
	if opts.Program != "" && len(r.Programs) == 0 {
		return nil, fmt.Errorf("%w %q in %s (it has: %s)", ErrNoProgram, opts.Program, name,
			strings.Join(sortedNames(spec.Programs), ", "))
	}
	for _, mname := range sortedNames(spec.Maps) {
		r.Maps = append(r.Maps, describeMap(spec.Maps[mname]))
	}
	return r, nil
}

func describeProgram(spec *ebpf.CollectionSpec, ps *ebpf.ProgramSpec) Program {
	out := Program{
		Name:         ps.Name,
		Type:         ps.Type.String(),
		Section:      ps.SectionName,
		AttachTo:     ps.AttachTo,
		Instructions: len(ps.Instructions),
	}
	if ps.AttachType != ebpf.AttachNone {
		out.AttachType = ps.AttachType.String()
	}
	p, err := program.Lift(ps)
	if err != nil {
		out.LiftError = err.Error()
		return out
	}
	out.Blocks = p.NumBlocks()
	for _, f := range p.Funcs {
		n := 0
		for _, b := range f.Blocks {
			n += len(b.Insns)
		}
		out.Functions = append(out.Functions, Function{Name: f.Name, Blocks: len(f.Blocks), Instructions: n})
	}
	if out.Analysis, err = analyse(spec, p); err != nil {
		out.AnalysisError = err.Error()
		out.Analysis = nil
	}
	return out
}

func describeMap(ms *ebpf.MapSpec) Map {
	return Map{
		Name:        ms.Name,
		Type:        ms.Type.String(),
		KeySize:     ms.KeySize,
		ValueSize:   ms.ValueSize,
		MaxEntries:  ms.MaxEntries,
		Flags:       ms.Flags,
		KeyType:     typeName(ms.Key),
		ValueType:   typeName(ms.Value),
		Initialized: len(ms.Contents) > 0,
	}
}

// typeName renders a BTF type compactly: its name, or its kind for
// anonymous types.
func typeName(t btf.Type) string {
	if t == nil {
		return ""
	}
	if name := t.TypeName(); name != "" {
		return name
	}
	switch t := t.(type) {
	case *btf.Void:
		return "void"
	case *btf.Array:
		return fmt.Sprintf("%s[%d]", typeName(t.Type), t.Nelems)
	case *btf.Pointer:
		return typeName(t.Target) + "*"
	case *btf.Struct:
		return fmt.Sprintf("struct{%d fields}", len(t.Members))
	case *btf.Union:
		return fmt.Sprintf("union{%d fields}", len(t.Members))
	}
	return fmt.Sprintf("%T", t)
}

// WriteText prints the report as aligned tables.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Object: %s\n\n", r.Object)
	fmt.Fprintln(tw, "PROGRAM\tTYPE\tSECTION\tINSNS\tFUNCS\tBLOCKS\tNOTE")
	for _, p := range r.Programs {
		var funcs []string
		for _, f := range p.Functions {
			funcs = append(funcs, f.Name)
		}
		note := p.LiftError
		if note == "" && len(funcs) > 1 {
			note = "calls: " + strings.Join(funcs[1:], ", ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", p.Name, p.Type, p.Section, p.Instructions, len(p.Functions), p.Blocks, note)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "MAP\tTYPE\tKEY\tVALUE\tMAX\tFLAGS\tKEY TYPE\tVALUE TYPE")
	for _, m := range r.Maps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%#x\t%s\t%s\n", m.Name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags, dash(m.KeyType), dash(m.ValueType))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range r.Programs {
		fmt.Fprintln(w)
		switch {
		case p.Analysis != nil:
			if err := writeAnalysis(w, p.Name, p.Analysis); err != nil {
				return err
			}
		case p.AnalysisError != "":
			fmt.Fprintf(w, "Program %s: left alone: %s\n", p.Name, p.AnalysisError)
		default:
			fmt.Fprintf(w, "Program %s: left alone: %s\n", p.Name, p.LiftError)
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
