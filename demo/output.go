//go:build linux

package demo

import (
	"fmt"
	"html/template"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/morpheus-go/morpheus/agent"
)

// Output file names in Report.OutDir.
const (
	ThroughputPNG = "throughput.png"
	CostPNG       = "ns_per_packet.png"
	HotPNG        = "hot_keys.png"
	PageHTML      = "index.html"
)

// printSummary writes the per-phase table.
func printSummary(w io.Writer, r *Report) {
	fmt.Fprintf(w, "\nsummary (%s, %s locality)\n", r.NF, r.Locality)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\ttime\tmean pps\tns/packet\tspeedup (pps)\tspeedup (ns)\tlast program ns/packet\tspeedup\tswaps\t")
	for _, p := range r.Phases {
		fmt.Fprintf(tw, "%s\t%.1f-%.1fs\t%s\t%.1f\t%.2fx\t%.2fx\t%.1f\t%.2fx\t%d\t\n", p.Name, p.Start.Seconds(), p.End.Seconds(), formatPPS(p.PPS), p.NsPerPacket, p.Speedup, p.NsSpeedup, p.SteadyNsPerPacket, p.SteadySpeedup, p.Swaps)
	}
	tw.Flush()
	fmt.Fprintln(w, "(means over the whole phase, profiling windows and the optimizer's own CPU use included; the last program's\n ns/packet counts only the intervals it ran alone. On a shared 2-core machine expect ±15% noise.)")
	if c := r.Change; c != nil {
		fmt.Fprintf(w, "change: %s; guard bumps %v; the optimized program's next test run %s", c.Description, c.GuardBumps, map[bool]string{true: "used it at once", false: "did NOT use it"}[c.UsedAtOnce])
		if c.Reoptimized > 0 {
			fmt.Fprintf(w, "; re-optimized %v later (%s)", c.Reoptimized.Round(time.Millisecond), c.ReoptimizeOutcome)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "agent: %d cycles, %d swaps, %d profiling windows, %d guard bumps\n", r.Stats.Cycles, r.Stats.Swaps, r.Stats.ProfileWindows, r.Stats.GuardBumps)
}

// writeOutputs writes the plots and the page into r.OutDir and returns
// their paths.
func writeOutputs(r *Report) ([]string, error) {
	var files []string
	series := smoothed(r.Samples, 5)
	for _, p := range []struct {
		name, title, unit string
		value             func(pt point) float64
	}{
		{ThroughputPNG, "throughput", "Mpps", func(pt point) float64 { return pt.pps / 1e6 }},
		{CostPNG, "cost per packet (bpf_stats)", "ns/packet", func(pt point) float64 { return pt.ns }},
	} {
		path := filepath.Join(r.OutDir, p.name)
		if err := timePlot(path, r, series, fmt.Sprintf("%s: %s", r.NF, p.title), p.unit, p.value); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	if hasHotKeys(r) {
		path := filepath.Join(r.OutDir, HotPNG)
		if err := hotPlot(path, r); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	path := filepath.Join(r.OutDir, PageHTML)
	if err := writePage(path, r, files); err != nil {
		return files, err
	}
	return append(files, path), nil
}

// point is the rate over a short window ending at t seconds.
type point struct {
	t, pps, ns float64
}

// smoothed turns cumulative samples into rates over windows of w
// sample intervals.
func smoothed(samples []Sample, w int) []point {
	var out []point
	for i := w; i < len(samples); i++ {
		r := rateBetween(samples[i-w], samples[i])
		out = append(out, point{t: samples[i].Elapsed.Seconds(), pps: r.PPS, ns: r.NsPerPacket})
	}
	return out
}

// marker is a vertical line on the time plots.
type marker struct {
	t     float64
	label string
	color color.Color
}

func markers(r *Report) []marker {
	var out []marker
	for _, p := range r.Phases[1:] {
		out = append(out, marker{p.Start.Seconds(), p.Name, color.Gray{Y: 120}})
	}
	for _, e := range r.Events {
		switch e.Kind {
		case string(agent.EventSwap):
			if e.Version != "" {
				out = append(out, marker{e.Elapsed.Seconds(), "swap " + e.Version, color.RGBA{G: 150, A: 255}})
			}
		case string(agent.EventGuardBump):
			out = append(out, marker{e.Elapsed.Seconds(), "guard " + e.Map, color.RGBA{R: 200, A: 255}})
		}
	}
	return out
}

func timePlot(path string, r *Report, pts []point, title, unit string, value func(point) float64) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = unit
	xys := make(plotter.XYs, 0, len(pts))
	ymax := 0.0
	for _, pt := range pts {
		v := value(pt)
		if v <= 0 {
			continue // no packet in the window (a swap gap or profiling)
		}
		xys = append(xys, plotter.XY{X: pt.t, Y: v})
		ymax = max(ymax, v)
	}
	if len(xys) == 0 {
		xys = append(xys, plotter.XY{})
	}
	ymax = max(ymax*1.25, 1)
	p.Y.Min, p.Y.Max = 0, ymax
	ms := markers(r)
	var lx plotter.XYs
	var labels []string
	for i, m := range ms {
		l, err := plotter.NewLine(plotter.XYs{{X: m.t, Y: 0}, {X: m.t, Y: ymax}})
		if err != nil {
			return err
		}
		l.Color = m.color
		l.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		p.Add(l)
		// Stagger the labels so neighbours stay readable.
		lx = append(lx, plotter.XY{X: m.t, Y: ymax * (0.97 - 0.05*float64(i%4))})
		labels = append(labels, m.label)
	}
	line, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	line.Color = color.RGBA{B: 200, A: 255}
	line.Width = vg.Points(1.5)
	p.Add(line)
	if len(labels) > 0 {
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: lx, Labels: labels})
		if err != nil {
			return err
		}
		for i := range lbl.TextStyle {
			lbl.TextStyle[i].Font.Size = vg.Points(7)
			lbl.TextStyle[i].XAlign = draw.XLeft
		}
		p.Add(lbl)
	}
	return p.Save(10*vg.Inch, 4*vg.Inch, path)
}

// hasHotKeys says whether the profiler reported hot keys of the NF's
// tables: tables small enough to be inlined whole are not profiled.
func hasHotKeys(r *Report) bool {
	for _, hs := range r.Hot {
		if len(hs.Keys) > 0 {
			return true
		}
	}
	return false
}

// hotPlot draws the hot sets side by side as grouped bars of their
// shares.
func hotPlot(path string, r *Report) error {
	var keys []string
	for _, hs := range r.Hot {
		for _, k := range hs.Keys {
			if !slices.Contains(keys, k.Key) {
				keys = append(keys, k.Key)
			}
		}
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: hottest keys (profiler, share of sampled lookups)", r.NF)
	p.Y.Label.Text = "share (%)"
	w := vg.Points(8)
	top := 0.0
	for _, hs := range r.Hot {
		for _, k := range hs.Keys {
			top = max(top, 100*k.Share)
		}
	}
	p.Y.Min, p.Y.Max = 0, top*1.3+1
	colors := []color.Color{color.RGBA{B: 200, A: 255}, color.RGBA{R: 220, G: 120, A: 255}}
	for i, hs := range r.Hot {
		vals := make(plotter.Values, len(keys))
		for j, k := range keys {
			for _, hk := range hs.Keys {
				if hk.Key == k {
					vals[j] = 100 * hk.Share
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = colors[i%len(colors)]
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(float64(i)-float64(len(r.Hot)-1)/2)
		p.Add(bars)
		p.Legend.Add(hs.Label, bars)
	}
	p.Legend.Top = true
	p.NominalX(keys...)
	p.X.Tick.Label.Rotation = 0.8
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.Font.Size = vg.Points(7)
	return p.Save(10*vg.Inch, 4.5*vg.Inch, path)
}

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"pps":  formatPPS,
	"secs": func(d time.Duration) string { return fmt.Sprintf("%.1f", d.Seconds()) },
	"ms":   func(d time.Duration) time.Duration { return d.Round(time.Millisecond) },
	"base": filepath.Base,
}).Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Morpheus demo: {{.R.NF}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td.l,th.l{text-align:left}img{max-width:100%}</style>
</head><body>
<h1>Morpheus demo: {{.R.NF}}</h1>
<p>{{.R.NF}} ({{.R.Config}}) on {{.R.Interface}}, {{.R.Locality}}-locality trace, started {{.R.Start.Format "2006-01-02 15:04:05 MST"}}.
Original program {{.R.OriginalID}}; optimized versions {{.R.Versions}}.
Agent: {{.R.Stats.Cycles}} cycles, {{.R.Stats.Swaps}} swaps, {{.R.Stats.ProfileWindows}} profiling windows, {{.R.Stats.GuardBumps}} guard bumps.</p>
<h2>Summary</h2>
<table><tr><th class="l">phase</th><th>time (s)</th><th>mean pps</th><th>ns/packet</th><th>speedup (pps)</th><th>speedup (ns)</th><th>last program ns/packet</th><th>speedup</th><th>swaps</th><th class="l">programs</th></tr>
{{range .R.Phases}}<tr><td class="l">{{.Name}}: {{.Title}}</td><td>{{secs .Start}}-{{secs .End}}</td><td>{{pps .PPS}}</td><td>{{printf "%.1f" .NsPerPacket}}</td><td>{{printf "%.2fx" .Speedup}}</td><td>{{printf "%.2fx" .NsSpeedup}}</td><td>{{printf "%.1f" .SteadyNsPerPacket}}</td><td>{{printf "%.2fx" .SteadySpeedup}}</td><td>{{.Swaps}}</td><td class="l">{{.Programs}}</td></tr>
{{end}}</table>
{{with .R.Change}}<h2>Control-plane change</h2>
<p>{{.Description}} (hot flow {{.Flow}}, {{.Writes}} entries written through the agent; guard bumps {{.GuardBumps}}; tripped guards {{.Tripped}}).</p>
<table><tr><th class="l">test run of program {{.ProgramID}}</th><th class="l">result</th></tr>
<tr><td class="l">before the change</td><td class="l">{{.Before}}</td></tr>
<tr><td class="l">right after the change</td><td class="l">{{.After}}</td></tr>
<tr><td class="l">original program, new table</td><td class="l">{{.Original}}</td></tr></table>
<p>The new entry was {{if .UsedAtOnce}}used by the very next packet{{else}}<b>not</b> used at once{{end}}{{if .Reoptimized}}; re-optimized {{ms .Reoptimized}} later ({{.ReoptimizeOutcome}}){{end}}.</p>{{end}}
<h2>Plots</h2>
{{range .Images}}<p><img src="{{base .}}" alt="{{base .}}"></p>
{{end}}
<h2>Events</h2>
<table><tr><th>time (s)</th><th class="l">phase</th><th class="l">kind</th><th class="l">what</th></tr>
{{range .R.Events}}<tr><td>{{secs .Elapsed}}</td><td class="l">{{.Phase}}</td><td class="l">{{.Kind}}</td><td class="l">{{if .Map}}{{.Map}}: {{end}}{{.Message}}{{if .Version}} (program {{.ProgramID}}, {{.Version}}){{end}}</td></tr>
{{end}}</table>
</body></html>
`))

func writePage(path string, r *Report, images []string) error {
	var b strings.Builder
	if err := page.Execute(&b, struct {
		R      *Report
		Images []string
	}{r, images}); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
