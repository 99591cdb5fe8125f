package api

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics owns the server's Prometheus registry. Counters are read from
// the backend at scrape time, so they are exact; the cycle-duration
// histogram is fed from the cycle events polled by the sampler.
type metrics struct {
	reg           *prometheus.Registry
	backend       Backend
	cycleDuration prometheus.Histogram

	mu      sync.Mutex
	lastSeq uint64
}

var (
	descCycles       = prometheus.NewDesc("morpheus_cycles_total", "Optimization cycles run.", nil, nil)
	descSwaps        = prometheus.NewDesc("morpheus_swaps_total", "Optimized programs swapped in.", nil, nil)
	descRejections   = prometheus.NewDesc("morpheus_verifier_rejections_total", "Candidates the kernel verifier rejected.", nil, nil)
	descDiffFailures = prometheus.NewDesc("morpheus_differential_failures_total", "Candidates that behaved differently from the original in the differential test.", nil, nil)
	descGuardBumps   = prometheus.NewDesc("morpheus_guard_bumps_total", "Guard versions bumped by control-plane changes.", nil, nil)
	descDeopts       = prometheus.NewDesc("morpheus_deoptimizations_total", "Optimized programs replaced by the original (guard invalidation, disable, foreign map writes).", nil, nil)
	descProfiles     = prometheus.NewDesc("morpheus_profile_windows_total", "Profiling windows run with an instrumented variant.", nil, nil)

	progLabels      = []string{"program", "nf"}
	descPackets     = prometheus.NewDesc("morpheus_program_packets_total", "Packets processed by the program (bpf_stats run count).", progLabels, nil)
	descRunTime     = prometheus.NewDesc("morpheus_program_run_time_seconds_total", "Time spent in the program (bpf_stats run time).", progLabels, nil)
	descNSPerPacket = prometheus.NewDesc("morpheus_program_ns_per_packet", "Mean run time per packet over the last sample interval.", progLabels, nil)
	descVersion     = prometheus.NewDesc("morpheus_program_version", "Optimization version running (0 is the original).", progLabels, nil)
	descEnabled     = prometheus.NewDesc("morpheus_program_optimization_enabled", "1 when optimization is enabled for the program.", progLabels, nil)
)

func newMetrics(b Backend, s *series) *metrics {
	m := &metrics{
		reg:     prometheus.NewRegistry(),
		backend: b,
		cycleDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "morpheus_cycle_duration_seconds",
			Help: "Duration of optimization cycles.",
			// Cycles range from milliseconds (nothing to do) to seconds
			// (many candidates through the verifier and differential test).
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
	}
	m.reg.MustRegister(
		m.cycleDuration,
		&collector{backend: b, series: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// pollEvents observes the durations of cycle events not seen yet.
func (m *metrics) pollEvents(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	evs, err := m.backend.Events(ctx, m.lastSeq)
	if err != nil {
		return err
	}
	for _, e := range evs {
		if e.Seq <= m.lastSeq {
			continue
		}
		m.lastSeq = e.Seq
		if e.Kind == EventCycle {
			m.cycleDuration.Observe(e.Duration.Seconds())
		}
	}
	return nil
}

// collector reads the backend's counters and program stats at scrape time.
type collector struct {
	backend Backend
	series  *series
}

// scrapeTimeout bounds the backend calls of one scrape.
const scrapeTimeout = 5 * time.Second

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCycles, descSwaps, descRejections, descDiffFailures, descGuardBumps, descDeopts, descProfiles,
		descPackets, descRunTime, descNSPerPacket, descVersion, descEnabled} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	st, err := c.backend.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descCycles, err)
	} else {
		for _, v := range []struct {
			d *prometheus.Desc
			n uint64
		}{
			{descCycles, st.Cycles},
			{descSwaps, st.Swaps},
			{descRejections, st.VerifierRejections},
			{descDiffFailures, st.DifferentialFailures},
			{descGuardBumps, st.GuardBumps},
			{descDeopts, st.Deoptimizations},
			{descProfiles, st.ProfileWindows},
		} {
			ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, float64(v.n))
		}
	}
	progs, err := c.backend.Programs(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descPackets, err)
		return
	}
	for _, p := range progs {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(p.Run.Packets), p.Name, p.NF)
		ch <- prometheus.MustNewConstMetric(descRunTime, prometheus.CounterValue, p.Run.RunTime.Seconds(), p.Name, p.NF)
		ch <- prometheus.MustNewConstMetric(descVersion, prometheus.GaugeValue, float64(p.Version), p.Name, p.NF)
		enabled := 0.0
		if p.Enabled {
			enabled = 1
		}
		ch <- prometheus.MustNewConstMetric(descEnabled, prometheus.GaugeValue, enabled, p.Name, p.NF)
		if smp, ok := c.series.latest(p.ID()); ok && smp.Packets > 0 {
			ch <- prometheus.MustNewConstMetric(descNSPerPacket, prometheus.GaugeValue, smp.NSPerPacket, p.Name, p.NF)
		}
	}
}
