package api_test

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/api/apitest"
)

// browser returns the path of a Chromium-family browser. In CI a missing
// browser fails the test: the status page must be tested there.
func browser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no Chromium found: install it (apt-get install -y chromium) to test the status page")
	}
	t.Skip("no Chromium found; install chromium to test the status page")
	return ""
}

// TestStatusPage loads the status page in headless Chromium, waits for
// the ns/packet chart to render, checks what the page shows and takes a
// screenshot.
func TestStatusPage(t *testing.T) {
	exe := browser(t)
	const token = "page-token"
	fake := apitest.New()
	srv := api.NewServer(fake, api.Options{Token: token})
	// Twenty seconds of router traffic whose cost drops from 80 to 40
	// ns/packet when the optimized version lands; the firewall is idle.
	t0 := time.Now().Add(-20 * time.Second)
	var pkts uint64
	var runTime time.Duration
	for i := range 21 {
		ns := 80
		if i > 10 {
			ns = 40
		}
		if i > 0 {
			pkts += 100_000
			runTime += time.Duration(100_000 * ns)
		}
		fake.SetRun("router:xdp_router", pkts, runTime)
		srv.Sample(t.Context(), t0.Add(time.Duration(i)*time.Second))
	}
	if _, err := fake.Cycle(t.Context(), "router", ""); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	const chart = chromedp.CSS(`article[data-program="router:xdp_router"] svg.chart circle.pt`)
	// The token travels in the fragment, so it never reaches the server in
	// a URL; the page sends it as a bearer token.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(ts.URL+"/#token="+token),
		chromedp.WaitVisible(chart),
	); err != nil {
		t.Fatalf("waiting for the chart: %v", err)
	}
	programs := run[[]string](t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("article.program")].map(a => a.dataset.program)`))
	heatKeys := run[[]string](t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("article[data-program='router:xdp_router'] .heatmap[data-map='routes'] td.key")].map(td => td.textContent)`))
	points := run[int](t, ctx, chromedp.Evaluate[int](`Number(document.querySelector("article[data-program='router:xdp_router'] svg.chart").dataset.points)`))
	circles := run[int](t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("article[data-program='router:xdp_router'] svg.chart circle.pt").length`))
	version := run[string](t, ctx, chromedp.Text(chromedp.CSS(`article[data-program="router:xdp_router"] .version`)))
	stats := run[string](t, ctx, chromedp.Evaluate[string](`document.querySelector("#stats").innerText`))
	shot := run[[]byte](t, ctx, chromedp.FullScreenshot(100))

	if want := []string{"fw:xdp_firewall", "router:xdp_router"}; !slices.Equal(programs, want) {
		t.Errorf("program cards %v, want %v", programs, want)
	}
	if want := []string{"20000000c0a80107", "200000000a000001", "200000000a000002"}; !slices.Equal(heatKeys, want) {
		t.Errorf("router heat keys %v, want %v (hottest first)", heatKeys, want)
	}
	if points != 20 || circles != 20 {
		t.Errorf("chart has %d data points and %d circles, want 20", points, circles)
	}
	if version != "version 2" {
		t.Errorf("router shows %q, want version 2", version)
	}
	if !strings.Contains(stats, "1\ncycles") {
		t.Errorf("counters %q lack the cycle", stats)
	}

	// MORPHEUS_SCREENSHOT=FILE keeps a copy for a human to look at.
	path := filepath.Join(t.TempDir(), "status.png")
	if keep := os.Getenv("MORPHEUS_SCREENSHOT"); keep != "" {
		path = keep
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	b := img.Bounds()
	if b.Dx() < 1000 || b.Dy() < 600 || len(shot) < 20_000 {
		t.Errorf("screenshot %s is %dx%d, %d bytes; want at least 1000x600 and 20 kB", path, b.Dx(), b.Dy(), len(shot))
	}
	if n := colors(img); n < 8 {
		t.Errorf("screenshot has %d distinct colors; the page did not render", n)
	}
}

// run runs one browser action and returns its result.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// colors counts distinct colors on a sampling grid.
func colors(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}
