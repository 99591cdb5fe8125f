package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

//go:embed static
var staticFiles embed.FS

// Defaults of Options.
const (
	DefaultSampleInterval = time.Second
	DefaultSeriesLength   = 600
	DefaultMaxBodyBytes   = 64 << 10
	DefaultHeatTop        = 20
	DefaultEventLimit     = 100
	maxEventLimit         = 10000
	maxHeatTop            = 10000
)

// Options configures a Server.
type Options struct {
	// Token, when set, is required as "Authorization: Bearer TOKEN" on every
	// route except the static status page assets (which hold no data; the
	// page sends the token it is given in its URL fragment).
	Token string
	// CheckHost rejects requests whose Host header is not a loopback
	// address or "localhost". Set it when listening on loopback TCP: it
	// stops DNS-rebinding pages in a local browser from reaching the API.
	CheckHost bool
	// SampleInterval is how often Run samples program statistics for the
	// time series and the metrics (default DefaultSampleInterval).
	SampleInterval time.Duration
	// SeriesLength bounds the samples kept per program (default
	// DefaultSeriesLength).
	SeriesLength int
	// MaxBodyBytes bounds request bodies (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Logger receives request errors; nil discards them.
	Logger *slog.Logger
}

// Server serves the API, the metrics and the status page for a Backend.
type Server struct {
	backend Backend
	opts    Options
	log     *slog.Logger
	token   [sha256.Size]byte
	mux     *http.ServeMux
	series  *series
	metrics *metrics
}

// NewServer returns a server for b. Call Run (or Serve, which calls it) to
// keep the time series and the cycle-duration histogram up to date.
func NewServer(b Backend, opts Options) *Server {
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = DefaultSampleInterval
	}
	if opts.SeriesLength <= 0 {
		opts.SeriesLength = DefaultSeriesLength
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		backend: b,
		opts:    opts,
		log:     log,
		mux:     http.NewServeMux(),
		series:  newSeries(opts.SeriesLength),
	}
	// Comparing digests keeps the comparison constant-time even when the
	// lengths differ.
	s.token = sha256.Sum256([]byte(opts.Token))
	s.metrics = newMetrics(b, s.series)
	s.routes()
	return s
}

func (s *Server) routes() {
	api := func(pattern string, h http.HandlerFunc) {
		s.mux.Handle(pattern, s.authorized(h))
	}
	api("GET /v1/programs", s.getPrograms)
	api("GET /v1/programs/{name}", s.getProgram)
	api("POST /v1/programs/{name}/enable", s.setEnabled(true))
	api("POST /v1/programs/{name}/disable", s.setEnabled(false))
	api("POST /v1/cycle", s.postCycle)
	api("GET /v1/maps", s.getMaps)
	api("GET /v1/maps/{name}/entries", s.getEntries)
	api("PUT /v1/maps/{name}/entries", s.putEntry)
	api("DELETE /v1/maps/{name}/entries/{key}", s.deleteEntry)
	api("GET /v1/heatmaps", s.getHeatmaps)
	api("GET /v1/events", s.getEvents)
	api("GET /v1/series", s.getSeries)
	api("GET /v1/stats", s.getStats)
	s.mux.Handle("GET /metrics", s.authorized(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}).ServeHTTP))

	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:")
		http.ServeFileFS(w, r, static, "index.html")
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.opts.CheckHost && !loopbackHost(r.Host) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("host %q is not a loopback address", r.Host))
		return
	}
	// Browsers send Origin on cross-site requests; a page on another
	// origin must not be able to change the data plane with a form post.
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host && o != "https://"+r.Host {
			writeError(w, http.StatusForbidden, fmt.Sprintf("cross-origin request from %q refused", o))
			return
		}
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if _, pattern := s.mux.Handler(r); pattern == "" && strings.HasPrefix(r.URL.Path, "/v1/") {
		// The mux decides between 404 and 405 (and sets Allow); only
		// its plain-text body is replaced by a JSON error.
		w = &jsonStatusWriter{ResponseWriter: w, msg: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)}
	}
	s.mux.ServeHTTP(w, r)
}

// jsonStatusWriter turns the mux's plain-text 404 and 405 responses into
// JSON errors.
type jsonStatusWriter struct {
	http.ResponseWriter
	msg     string
	written bool
}

func (w *jsonStatusWriter) WriteHeader(code int) {
	w.Header().Del("Content-Length")
	writeError(w.ResponseWriter, code, w.msg)
	w.written = true
}

func (w *jsonStatusWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusNotFound)
	}
	return len(b), nil
}

// Run samples the backend every SampleInterval until ctx is done: the
// per-program time series behind /v1/series and the status page, and the
// cycle events behind the cycle-duration histogram.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.SampleInterval)
	defer t.Stop()
	for {
		s.Sample(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample takes one sample at now; Run calls it on every tick.
func (s *Server) Sample(ctx context.Context, now time.Time) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.SampleInterval*5)
	defer cancel()
	progs, err := s.backend.Programs(ctx)
	if err != nil {
		s.log.Warn("sampling programs", "err", err)
	} else {
		s.series.observe(now, progs)
	}
	if err := s.metrics.pollEvents(ctx); err != nil {
		s.log.Warn("polling events", "err", err)
	}
}

// Serve serves on ln until ctx is done, then shuts down gracefully. It
// runs the sampler for as long as it serves.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go s.Run(runCtx)

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Server) authorized(h http.HandlerFunc) http.HandlerFunc {
	if s.opts.Token == "" {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], s.token[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="morpheus"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h(w, r)
	}
}

func (s *Server) getPrograms(w http.ResponseWriter, r *http.Request) {
	progs, err := s.backend.Programs(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if progs == nil {
		progs = []Program{}
	}
	writeJSON(w, http.StatusOK, progs)
}

func (s *Server) getProgram(w http.ResponseWriter, r *http.Request) {
	p, ok := s.findProgram(w, r, r.PathValue("name"))
	if ok {
		writeJSON(w, http.StatusOK, p)
	}
}

// findProgram resolves a program name ("NAME" or "NF:NAME") or writes an
// error response.
func (s *Server) findProgram(w http.ResponseWriter, r *http.Request, name string) (Program, bool) {
	progs, err := s.backend.Programs(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return Program{}, false
	}
	var found []Program
	for _, p := range progs {
		if p.ID() == name || p.Name == name {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], true
	case 0:
		writeError(w, http.StatusNotFound, fmt.Sprintf("program %q not found", name))
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("program %q is ambiguous: it exists in %s; name it as NF:PROGRAM", name, nfList(found, Program.ID)))
	}
	return Program{}, false
}

func nfList[T any](items []T, id func(T) string) string {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = id(it)
	}
	return strings.Join(ids, ", ")
}

func (s *Server) setEnabled(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.findProgram(w, r, r.PathValue("name"))
		if !ok {
			return
		}
		if err := s.backend.SetEnabled(r.Context(), p.NF, p.Name, enabled); err != nil {
			s.fail(w, r, fmt.Errorf("program %q: %w", p.ID(), err))
			return
		}
		s.log.Info("optimization switched", "program", p.ID(), "enabled", enabled)
		writeJSON(w, http.StatusOK, map[string]any{"program": p.ID(), "enabled": enabled})
	}
}

// CycleRequest is the optional body of POST /v1/cycle; empty means a
// cycle of every NF.
type CycleRequest struct {
	// Program limits the cycle to one program ("NAME" or "NF:NAME").
	Program string `json:"program,omitempty"`
	// NF limits the cycle to one network function.
	NF string `json:"nf,omitempty"`
}

func (s *Server) postCycle(w http.ResponseWriter, r *http.Request) {
	var req CycleRequest
	if !s.decodeBody(w, r, &req, true) {
		return
	}
	nf, prog := req.NF, ""
	if req.Program != "" {
		p, ok := s.findProgram(w, r, req.Program)
		if !ok {
			return
		}
		if nf != "" && nf != p.NF {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("program %q does not belong to NF %q", req.Program, nf))
			return
		}
		nf, prog = p.NF, p.Name
	}
	res, err := s.backend.Cycle(r.Context(), nf, prog)
	if err != nil {
		s.fail(w, r, fmt.Errorf("cycle: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) getMaps(w http.ResponseWriter, r *http.Request) {
	maps, err := s.backend.Maps(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if maps == nil {
		maps = []Map{}
	}
	writeJSON(w, http.StatusOK, maps)
}

// findMap resolves the map named in the path ("NAME" or "NF:NAME") or
// writes an error response.
func (s *Server) findMap(w http.ResponseWriter, r *http.Request) (Map, bool) {
	name := r.PathValue("name")
	maps, err := s.backend.Maps(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return Map{}, false
	}
	var found []Map
	for _, m := range maps {
		if m.ID() == name || m.Name == name {
			found = append(found, m)
		}
	}
	switch len(found) {
	case 1:
		return found[0], true
	case 0:
		writeError(w, http.StatusNotFound, fmt.Sprintf("map %q not found", name))
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("map %q is ambiguous: it exists as %s; name it as NF:MAP", name, nfList(found, Map.ID)))
	}
	return Map{}, false
}

// EntriesResponse is the body of GET /v1/maps/{name}/entries.
type EntriesResponse struct {
	Map     string           `json:"map"`
	Entries []mapstate.Entry `json:"entries"`
}

func (s *Server) getEntries(w http.ResponseWriter, r *http.Request) {
	m, ok := s.findMap(w, r)
	if !ok {
		return
	}
	if r.URL.Query().Has("key") {
		key, err := ParseHex(m.ID(), "key", r.URL.Query().Get("key"), m.KeySize)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		e, err := s.backend.Lookup(r.Context(), m.NF, m.Name, key)
		if err != nil {
			s.fail(w, r, fmt.Errorf("map %q: key %x: %w", m.ID(), key, err))
			return
		}
		writeJSON(w, http.StatusOK, EntriesResponse{Map: m.ID(), Entries: []mapstate.Entry{e}})
		return
	}
	es, err := s.backend.Entries(r.Context(), m.NF, m.Name)
	if err != nil {
		s.fail(w, r, fmt.Errorf("map %q: %w", m.ID(), err))
		return
	}
	if es == nil {
		es = []mapstate.Entry{}
	}
	writeJSON(w, http.StatusOK, EntriesResponse{Map: m.ID(), Entries: es})
}

// UpdateRequest is the body of PUT /v1/maps/{name}/entries.
type UpdateRequest struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// ChangeResponse is the body of a successful update or delete.
type ChangeResponse struct {
	Map     string       `json:"map"`
	Key     mapstate.Hex `json:"key"`
	Value   mapstate.Hex `json:"value,omitempty"`
	Deleted bool         `json:"deleted,omitempty"`
	// Guarded is true when the change bumped a guard (and so triggers a
	// re-optimization).
	Guarded bool `json:"guarded"`
}

func (s *Server) putEntry(w http.ResponseWriter, r *http.Request) {
	m, ok := s.findMap(w, r)
	if !ok {
		return
	}
	var req UpdateRequest
	if !s.decodeBody(w, r, &req, false) {
		return
	}
	key, err := ParseHex(m.ID(), "key", req.Key, m.KeySize)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	value, err := ParseHex(m.ID(), "value", req.Value, m.ValueSize)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.backend.Update(r.Context(), m.NF, m.Name, key, value); err != nil {
		s.fail(w, r, fmt.Errorf("map %q: update key %x: %w", m.ID(), key, err))
		return
	}
	s.log.Info("map entry updated", "map", m.ID(), "key", hex.EncodeToString(key), "guarded", m.Guarded)
	writeJSON(w, http.StatusOK, ChangeResponse{Map: m.ID(), Key: key, Value: value, Guarded: m.Guarded})
}

func (s *Server) deleteEntry(w http.ResponseWriter, r *http.Request) {
	m, ok := s.findMap(w, r)
	if !ok {
		return
	}
	key, err := ParseHex(m.ID(), "key", r.PathValue("key"), m.KeySize)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.backend.Delete(r.Context(), m.NF, m.Name, key); err != nil {
		s.fail(w, r, fmt.Errorf("map %q: delete key %x: %w", m.ID(), key, err))
		return
	}
	s.log.Info("map entry deleted", "map", m.ID(), "key", hex.EncodeToString(key), "guarded", m.Guarded)
	writeJSON(w, http.StatusOK, ChangeResponse{Map: m.ID(), Key: key, Deleted: true, Guarded: m.Guarded})
}

func (s *Server) getHeatmaps(w http.ResponseWriter, r *http.Request) {
	top, ok := intParam(w, r, "top", DefaultHeatTop, 1, maxHeatTop)
	if !ok {
		return
	}
	h, err := s.backend.Heatmaps(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := map[string]*heatmap.Heatmap{}
	for nf, hm := range h {
		if hm == nil {
			continue
		}
		t := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
		for name := range hm.Maps {
			t.Maps[name] = hm.Top(name, top)
		}
		out[nf] = t
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getEvents(w http.ResponseWriter, r *http.Request) {
	limit, ok := intParam(w, r, "limit", DefaultEventLimit, 1, maxEventLimit)
	if !ok {
		return
	}
	var after uint64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("after: %q is not a sequence number", v))
			return
		}
		after = n
	}
	evs, err := s.backend.Events(r.Context(), after)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(evs) > limit {
		evs = evs[len(evs)-limit:]
	}
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, http.StatusOK, evs)
}

func (s *Server) getStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.backend.Stats(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// SeriesResponse is the body of GET /v1/series.
type SeriesResponse struct {
	Interval time.Duration       `json:"interval_ns"`
	Programs map[string][]Sample `json:"programs"`
}

func (s *Server) getSeries(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, SeriesResponse{Interval: s.opts.SampleInterval, Programs: s.series.snapshot()})
}

// decodeBody decodes a bounded JSON body into v, writing the error
// response itself. An empty body is accepted when optional is set.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		// Drain to EOF so an oversized trailer is still reported.
		_, err = io.Copy(io.Discard, body)
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.Is(err, io.EOF) && optional:
		return true
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", tooBig.Limit))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body is empty; expected a JSON object")
	default:
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
	}
	return false
}

// fail maps a backend error to a status code.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		status = http.StatusServiceUnavailable
	}
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, status, err.Error())
}

// ParseHex decodes a hex key or value of a map and checks that it has
// exactly size bytes. A "0x" prefix is accepted. Errors name the map and
// the problem.
func ParseHex(mapName, what, s string, size uint32) ([]byte, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if t == "" {
		return nil, fmt.Errorf("map %q: %s is missing (want %d bytes as %d hex digits)", mapName, what, size, 2*size)
	}
	b, err := hex.DecodeString(t)
	if err != nil {
		return nil, fmt.Errorf("map %q: %s %q is not hex: %v", mapName, what, s, err)
	}
	if uint32(len(b)) != size {
		return nil, fmt.Errorf("map %q: %s has %d bytes, the map's %s size is %d bytes (%d hex digits)", mapName, what, len(b), what, size, 2*size)
	}
	return b, nil
}

func intParam(w http.ResponseWriter, r *http.Request, name string, def, lo, hi int) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not an integer in [%d, %d]", name, v, lo, hi))
		return 0, false
	}
	return n, true
}

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the status is sent; a write error means the client left
}

// loopbackHost reports whether a Host header names the local machine.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
