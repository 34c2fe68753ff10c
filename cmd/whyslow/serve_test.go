package main

// whyslow serve for real: the probes on the real kernel, the udev freeze
// story on a loop device, Debian's Prometheus scraping /metrics and
// evaluating deploy/prometheus/whyslow.rules.yml, /trace analyzed again,
// and a control window without the trigger; SIGHUP reloading --rules and
// SIGTERM stopping it.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// servingRE is what serve prints once its probes run and it answers.
var servingRE = regexp.MustCompile(`serving on http://(\S+) `)

// startServe runs `whyslow serve` on a free loopback port and returns it
// and its base URL once it answers.
func startServe(t *testing.T, args ...string) (*running, string) {
	t.Helper()
	r := start(t, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	deadline := time.Now().Add(90 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(r.errb.String()); m != nil {
			return r, "http://" + m[1]
		}
		select {
		case <-r.done:
			t.Fatalf("whyslow serve ended before it served: exit %d; stderr %s", r.code, r.errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("whyslow serve did not serve within 90s; stderr %s", r.errb.String())
		}
	}
}

// get fetches u and returns the status and body.
func get(t *testing.T, u string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp.StatusCode, b
}

// stopServe sends sig and checks serve stops cleanly: exit 0, probes
// detached.
func stopServe(t *testing.T, r *running, sig syscall.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("serve still runs 60s after %v; stderr %s", sig, r.errb.String())
	}
	if r.code != 0 || !strings.Contains(r.errb.String(), "probes detached") {
		t.Fatalf("serve after %v: exit %d, stderr %s", sig, r.code, r.errb.String())
	}
}

// prometheus is a Prometheus server started by a test.
type prometheus struct{ url string }

// startPrometheus runs Debian's prometheus on a free loopback port with a
// 2 s scrape and evaluation interval, scraping target and evaluating the
// alerting rules of deploy/prometheus.
func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		scenario.Skip(t, "prometheus not found (Debian package prometheus; make deps installs it): %v", err)
	}
	rulesFile, err := filepath.Abs("../../deploy/prometheus/whyslow.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
rule_files: [%q]
scrape_configs:
  - job_name: whyslow
    static_configs:
      - targets: [%q]
`, rulesFile, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var logs scenario.Buffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus's log:\n%s", logs.String())
		}
	})
	p := &prometheus{url: "http://" + addr}
	if !waitUntil(60*time.Second, func() bool {
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}) {
		t.Fatalf("prometheus not ready after 60s:\n%s", logs.String())
	}
	return p
}

// api asks Prometheus's HTTP API and decodes its data.
func (p *prometheus) api(t *testing.T, path string, data any) {
	t.Helper()
	code, b := get(t, p.url+path)
	var resp struct {
		Status string
		Data   json.RawMessage
		Error  string
	}
	if err := json.Unmarshal(b, &resp); err != nil || code != 200 || resp.Status != "success" {
		t.Fatalf("prometheus %s: HTTP %d, %v: %s", path, code, err, b)
	}
	if err := json.Unmarshal(resp.Data, data); err != nil {
		t.Fatalf("prometheus %s: %v: %s", path, err, resp.Data)
	}
}

// sample is one series of an instant query's vector.
type sample struct {
	Metric map[string]string
	Value  [2]any
}

// query runs an instant PromQL query.
func (p *prometheus) query(t *testing.T, q string) []sample {
	t.Helper()
	var data struct {
		ResultType string
		Result     []sample
	}
	p.api(t, "/api/v1/query?query="+url.QueryEscape(q), &data)
	return data.Result
}

// alert is one of /api/v1/alerts.
type alert struct {
	Labels map[string]string
	State  string
}

func (p *prometheus) alerts(t *testing.T) []alert {
	t.Helper()
	var data struct{ Alerts []alert }
	p.api(t, "/api/v1/alerts", &data)
	return data.Alerts
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Second)
	}
}

// The story under serve, scraped by a real Prometheus: the queue freeze
// finding for the loop device appears as whyslow_finding and its alert
// fires; the flight recorder's trace of the last seconds analyzes to the
// same top finding; once the trigger stops, a window without it drops the
// finding from Prometheus and the alert resolves.
func TestServePrometheusFreeze(t *testing.T) {
	scenario.RequireRoot(t)
	if _, err := exec.LookPath("prometheus"); err != nil {
		scenario.Skip(t, "prometheus not found (Debian package prometheus; make deps installs it): %v", err)
	}
	dev := scenario.LoopDevice(t, 256<<20)
	scenario.QueueRule(t, dev)
	srv, base := startServe(t, "--window", "10s")
	prom := startPrometheus(t, strings.TrimPrefix(base, "http://"))

	if code, b := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d %s", code, b)
	}
	mon := scenario.Monitor(t, dev, 2*time.Second)
	w := scenario.Writer(t, dev, 3*time.Minute)
	defer w.Pause()

	finding := fmt.Sprintf(`whyslow_finding{rule="queue-freeze-stall",device=%q}`, dev)
	var got []sample
	if !waitUntil(90*time.Second, func() bool { got = prom.query(t, finding); return len(got) > 0 }) {
		code, b := get(t, base+"/report?format=text")
		t.Fatalf("Prometheus has no %s after 90s; /report (%d):\n%s\nserve's stderr: %s", finding, code, b, srv.errb.String())
	}
	t.Logf("Prometheus: %s = %v (%v)", finding, got[0].Value[1], got[0].Metric)
	if got[0].Metric["severity"] != "critical" || got[0].Metric["job"] != "whyslow" {
		t.Errorf("series labels %v: want severity critical, job whyslow", got[0].Metric)
	}
	firing := func() bool {
		for _, a := range prom.alerts(t) {
			if a.Labels["alertname"] == "WhyslowQueueFreezeStall" && a.Labels["device"] == dev && a.State == "firing" {
				return true
			}
		}
		return false
	}
	if !waitUntil(20*time.Second, firing) {
		t.Fatalf("alert WhyslowQueueFreezeStall for %s not firing: %+v", dev, prom.alerts(t))
	}
	// The histograms, the freezes and the probes are there too.
	for _, q := range []string{
		fmt.Sprintf(`whyslow_queue_freezes_total{device=%q} > 0`, dev),
		fmt.Sprintf(`whyslow_submit_latency_seconds_count{device=%q} > 0`, dev),
		`whyslow_probe_info{probe="freeze",status="ok"}`,
		// The application's view: fio's writes blocked behind the freezes.
		fmt.Sprintf(`whyslow_stage_seconds_total{stage="queue_freeze",device=%q} > 0`, dev),
		`process_resident_memory_bytes{job="whyslow"}`,
	} {
		if len(prom.query(t, q)) == 0 {
			t.Errorf("Prometheus: %s is empty", q)
		}
	}

	// The last 30 s from the flight recorder analyze to the same top
	// finding.
	code, tr := get(t, base+"/trace?seconds=30")
	if code != 200 {
		t.Fatalf("/trace: %d %s", code, tr)
	}
	trace := filepath.Join(t.TempDir(), "last30s.trace.gz")
	if err := os.WriteFile(trace, tr, 0o644); err != nil {
		t.Fatal(err)
	}
	res := run(t, "analyze", "--format", "json", trace)
	if res.code != 0 {
		t.Fatalf("analyze of /trace: exit %d: %s", res.code, res.stderr)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("analyze: %v", err)
	}
	if len(rep.Findings) == 0 || rep.Findings[0].Rule != "queue-freeze-stall" || !slices.Contains(rep.Findings[0].Devices, dev) {
		t.Fatalf("analyze of /trace: top finding is not queue-freeze-stall on %s:\n%s", dev, summary(&rep))
	}

	// The control: no trigger any more. A window without it drops the
	// finding from /metrics, so from Prometheus, and the alert resolves.
	if err := mon.Stop(); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(60*time.Second, func() bool { return len(prom.query(t, finding)) == 0 && !firing() }) {
		t.Fatalf("60s after the trigger stopped, Prometheus still has %v; alerts %+v", prom.query(t, finding), prom.alerts(t))
	}
	_, b := get(t, base+"/report?format=json")
	var last report.Report
	if err := json.Unmarshal(b, &last); err != nil {
		t.Fatalf("/report?format=json: %v: %s", err, b)
	}
	for _, f := range last.Findings {
		if f.Rule == "queue-freeze-stall" || f.Rule == "periodic-trigger" {
			t.Errorf("the control window's report still has %s:\n%s", f.Rule, summary(&last))
		}
	}
	stopServe(t, srv, syscall.SIGTERM)
}

// SIGHUP reloads --rules: a broken file keeps the rules in use and says
// why (stderr, whyslow_rules_last_reload_success 0); a good one is used
// from then on. Bad requests are told what is wrong; SIGINT stops it.
func TestServeReloadAndRequests(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine.yaml")
	rule := "id: mine\ntitle: mine on {{.Device.Name}}\nseverity: info\nscope: device\nwhen: Device.Stalls.Count() > 0\n"
	if err := os.WriteFile(mine, []byte(rule), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, base := startServe(t, "--window", "2s", "--rules", dir)
	metric := func(name string) string {
		_, b := get(t, base+"/metrics")
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				return v
			}
		}
		return ""
	}
	loaded := metric("whyslow_rules_loaded")
	if loaded == "" {
		t.Fatal("no whyslow_rules_loaded")
	}

	if err := os.WriteFile(mine, []byte("id: mine\nwhen: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	if !waitUntil(20*time.Second, func() bool { return strings.Contains(srv.errb.String(), "reloading the rules failed") }) {
		t.Fatalf("no word of the failed reload; stderr %s", srv.errb.String())
	}
	if !strings.Contains(srv.errb.String(), "mine.yaml") {
		t.Errorf("the failed reload does not name the file: %s", srv.errb.String())
	}
	if v := metric("whyslow_rules_last_reload_success"); v != "0" {
		t.Errorf("whyslow_rules_last_reload_success %q after a failed reload, want 0", v)
	}
	if v := metric("whyslow_rules_loaded"); v != loaded {
		t.Errorf("whyslow_rules_loaded %s after a failed reload, want the %s in use", v, loaded)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz %d after a failed reload", code)
	}

	// The file mended, and a second one: one more rule in use.
	if err := os.WriteFile(mine, []byte(rule), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "too.yaml"), []byte(strings.Replace(rule, "id: mine", "id: mine-too", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	if !waitUntil(20*time.Second, func() bool { return strings.Contains(srv.errb.String(), "reloaded the rules") }) {
		t.Fatalf("no word of the reload; stderr %s", srv.errb.String())
	}
	if v := metric("whyslow_rules_last_reload_success"); v != "1" {
		t.Errorf("whyslow_rules_last_reload_success %q after a good reload, want 1", v)
	}
	if got, want := metric("whyslow_rules_loaded"), fmt.Sprint(atoi(t, loaded)+1); got != want {
		t.Errorf("whyslow_rules_loaded %s after the reload, want %s", got, want)
	}

	for _, c := range []struct {
		path string
		code int
		want string
	}{
		{"/report?format=pdf", 400, "want one of"},
		{"/trace?seconds=-1", 400, "seconds="},
		{"/trace?seconds=100000", 400, "--flight-recorder"},
		{"/nope", 404, ""},
	} {
		code, b := get(t, base+c.path)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("GET %s: %d %q, want %d and %q", c.path, code, b, c.code, c.want)
		}
	}
	if !waitUntil(20*time.Second, func() bool { code, _ := get(t, base+"/report?format=markdown"); return code == 200 }) {
		t.Error("no report after 20s of 2s windows")
	}
	stopServe(t, srv, syscall.SIGINT)
}

func atoi(t *testing.T, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// The cgroup limits the iolimits probe reads once, at its start, hold in
// every later window: a writer throttled by one long after it was read,
// when the segment it came in has left the flight recorder, is found
// throttled (cgroup-throttle, naming its cgroup) in a window of serve, and
// in a /trace dump of that stretch analyzed again.
func TestServeLimitAfterFlightRecorder(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	dev := limitDisk(t)
	c := scenario.IOCgroup(t, "serve-thr")
	if err := c.LimitWriteIOPS(dev, 40); err != nil {
		t.Fatal(err)
	}
	const span = 4 * time.Second
	srv, base := startServe(t, "--window", "4s", "--flight-recorder", span.String(), "--device", dev)
	served := time.Now()
	// Past the span: the limit's segment has left the recorder.
	time.Sleep(span + 3*time.Second)
	w := scenario.WriterIn(t, c, dev, 16*time.Second)
	defer w.Stop()

	var last report.Report
	var start time.Time
	found := waitUntil(30*time.Second, func() bool {
		resp, err := http.Get(base + "/report?format=json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return false
		}
		start, _ = time.Parse(time.RFC3339Nano, resp.Header.Get("X-Whyslow-Window-Start"))
		last = report.Report{}
		if err := json.NewDecoder(resp.Body).Decode(&last); err != nil {
			t.Fatalf("/report?format=json: %v", err)
		}
		f, ok := findingOf(&last, "cgroup-throttle")
		return ok && start.After(served.Add(span)) && evidence(f, "cgroup") == c.Path
	})
	if !found {
		t.Fatalf("no window starting over %s after serve's start found cgroup-throttle on %s; the last (from %s):\n%s\nserve's stderr: %s",
			span, c.Path, start.Format(time.RFC3339Nano), summary(&last), srv.errb.String())
	}
	t.Logf("window from %s (%s after serve's start):\n%s", start.Format(time.RFC3339Nano), start.Sub(served).Round(time.Millisecond), summary(&last))

	code, tr := get(t, base+"/trace?seconds=4")
	if code != 200 {
		t.Fatalf("/trace: %d %s", code, tr)
	}
	trace := filepath.Join(t.TempDir(), "last.trace.gz")
	if err := os.WriteFile(trace, tr, 0o644); err != nil {
		t.Fatal(err)
	}
	res := run(t, "analyze", "--format", "json", trace)
	if res.code != 0 {
		t.Fatalf("analyze of /trace: exit %d: %s", res.code, res.stderr)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("analyze: %v", err)
	}
	if f, ok := findingOf(&rep, "cgroup-throttle"); !ok || evidence(f, "cgroup") != c.Path {
		t.Errorf("analyze of /trace: no cgroup-throttle on %s:\n%s", c.Path, summary(&rep))
	}
	stopServe(t, srv, syscall.SIGTERM)
}

// SIGHUP reloads --stages too: a broken table keeps the one in use and
// says why (stderr naming the file, whyslow_rules_last_reload_success 0);
// a good one names the stages from the next window on: a rule of ours
// that calls a synced writer's waits `lock` makes its blocked time show
// as lock on /metrics, where it was device before.
func TestServeReloadStages(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	dev := scenario.DiskLoop(t, 256<<20)
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine.yaml")
	// At first a rule for a frame no stack has.
	if err := os.WriteFile(mine, []byte("version: 1\nrules:\n  - stage: lock\n    frames: [whyslow_no_such_frame]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, base := startServe(t, "--window", "2s", "--stages", dir, "--device", dev)
	w := scenario.Writer(t, dev, 2*time.Minute)
	defer w.Stop()
	stageSeconds := func(stage string) float64 {
		_, b := get(t, base+"/metrics")
		prefix := fmt.Sprintf("whyslow_stage_seconds_total{device=%q,stage=%q} ", dev, stage)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, prefix); ok {
				var f float64
				fmt.Sscan(v, &f)
				return f
			}
		}
		return 0
	}
	if !waitUntil(20*time.Second, func() bool { return stageSeconds("device") > 0 }) {
		t.Fatalf("the writer's blocked time is not device after 20s; stderr %s", srv.errb.String())
	}
	if v := stageSeconds("lock"); v != 0 {
		t.Fatalf("lock %v s before any rule of ours names it", v)
	}

	if err := os.WriteFile(mine, []byte("version: 1\nrules:\n  - stage: nowhere\n    frames: [io_schedule]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	if !waitUntil(20*time.Second, func() bool { return strings.Contains(srv.errb.String(), "reloading the stage table failed") }) {
		t.Fatalf("no word of the failed reload; stderr %s", srv.errb.String())
	}
	if !strings.Contains(srv.errb.String(), "mine.yaml") || !strings.Contains(srv.errb.String(), `"nowhere"`) {
		t.Errorf("the failed reload does not name the file and the bad stage: %s", srv.errb.String())
	}
	if !strings.Contains(srv.errb.String(), "reloaded the rules") {
		t.Errorf("the rules were not reloaded with the stage table: %s", srv.errb.String())
	}
	_, b := get(t, base+"/metrics")
	if !strings.Contains(string(b), "\nwhyslow_rules_last_reload_success 0\n") {
		t.Errorf("whyslow_rules_last_reload_success is not 0 after a failed reload of the stage table")
	}
	if strings.Contains(string(b), "\nwhyslow_armed") {
		t.Errorf("serve without --armed-mode shows an armed state on /metrics (all its programs are attached all the time)")
	}
	time.Sleep(5 * time.Second) // windows with the table in use
	if v := stageSeconds("lock"); v != 0 {
		t.Errorf("lock %v s after a failed reload: the broken table is in use", v)
	}

	// The writer's waits, named lock by our rule, tried before the
	// built-in ones.
	good := "version: 1\nrules:\n  - stage: lock\n    frames: [io_schedule, io_schedule_timeout, submit_bio_wait, blkdev_issue_flush, __blkdev_direct_IO_simple, __blkdev_direct_IO, blkdev_direct_IO, __iomap_dio_rw, iomap_dio_rw, blkdev_write_iter, blkdev_fsync, file_write_and_wait_range, do_fsync, vfs_write, __x64_sys_pwrite64, __x64_sys_fdatasync]\n"
	if err := os.WriteFile(mine, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	if !waitUntil(20*time.Second, func() bool { return strings.Contains(srv.errb.String(), "reloaded the stage table") }) {
		t.Fatalf("no word of the reload; stderr %s", srv.errb.String())
	}
	if !waitUntil(20*time.Second, func() bool { return stageSeconds("lock") > 0 }) {
		t.Fatalf("20s after the reload, none of the writer's blocked time is lock; stderr %s", srv.errb.String())
	}
	_, b = get(t, base+"/metrics")
	if !strings.Contains(string(b), "\nwhyslow_rules_last_reload_success 1\n") {
		t.Errorf("whyslow_rules_last_reload_success is not 1 after a good reload")
	}
	// From then on the writer's time goes to lock, not device.
	d0, l0 := stageSeconds("device"), stageSeconds("lock")
	time.Sleep(6 * time.Second)
	d1, l1 := stageSeconds("device"), stageSeconds("lock")
	t.Logf("over 6s after the reload: device +%.3fs, lock +%.3fs", d1-d0, l1-l0)
	if l1-l0 <= d1-d0 {
		t.Errorf("after the reload the writer's blocked time grew device by %.3fs, lock by %.3fs: want most of it lock", d1-d0, l1-l0)
	}
	stopServe(t, srv, syscall.SIGTERM)
}

// The sums the probes keep besides the calls' (the syscall probe's memory
// stalls, the devfault probe's requeues) reach serve's windows: a writer
// reclaiming in its writes is found (memory-reclaim, naming fio) in a
// window of serve, as by a diagnosis.
func TestServeMemoryReclaim(t *testing.T) {
	scenario.RequireRoot(t)
	dev := fastDevice(t)
	procs := scenario.MemoryCgroup(t, 16<<20)
	srv, base := startServe(t, "--window", "4s", "--device", dev)
	w := scenario.BufferedWriter(t, dev, 14*time.Second, procs, reclaimRate)
	defer w.Stop()
	serveFinds(t, srv, base, 30*time.Second, fmt.Sprintf("memory-reclaim on %s naming fio", dev), func(rep *report.Report) bool {
		f, ok := findingOf(rep, "memory-reclaim")
		return ok && slices.Contains(f.Devices, dev) && namesComm(f, "fio")
	})
}

// serveFinds reads the last window's report from serve at base until
// found holds for it, for at most within, and fails the test, saying it
// wanted what, when none does; then it stops serve (SIGTERM, cleanly).
func serveFinds(t *testing.T, srv *running, base string, within time.Duration, what string, found func(*report.Report) bool) {
	t.Helper()
	var last report.Report
	ok := waitUntil(within, func() bool {
		code, b := get(t, base+"/report?format=json")
		if code != 200 {
			return false
		}
		last = report.Report{}
		if err := json.Unmarshal(b, &last); err != nil {
			t.Fatalf("/report?format=json: %v", err)
		}
		return found(&last)
	})
	if !ok {
		t.Fatalf("no window of serve found %s; the last:\n%s\nserve's stderr: %s", what, summary(&last), srv.errb.String())
	}
	t.Logf("findings:\n%s", summary(&last))
	stopServe(t, srv, syscall.SIGTERM)
}

// Each process's I/O (the submit probe's, read at every checkpoint)
// reaches serve's windows: a reader in a batch cgroup that starves a
// writer of the device is found (noisy-neighbour, the reader the cause)
// in a window of serve, as by a diagnosis.
func TestServeNoisyNeighbour(t *testing.T) {
	scenario.RequireRoot(t)
	n := neighbours{dev: scenario.DiskLoop(t, 256<<20)}
	n.cgroup = scenario.IOCgroup(t, "serve-batch")
	srv, base := startServe(t, "--window", "6s", "--device", n.dev)
	r, w := n.reader(t, time.Minute), n.writer(t, time.Minute)
	defer r.Stop()
	defer w.Stop()
	serveFinds(t, srv, base, 40*time.Second, fmt.Sprintf("noisy-neighbour on %s with the reader (pid %d) the cause", n.dev, r.Pid), func(rep *report.Report) bool {
		f, ok := findingOf(rep, "noisy-neighbour")
		return ok && slices.Contains(f.Devices, n.dev) && partOf(f, r.Pid, report.PartCause) != nil
	})
}
