// Package deploy holds what runs whyslow serve on a fleet: Prometheus
// alerting rules, a systemd unit and a Kubernetes DaemonSet. Its tests
// check each with the tool that will read it.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// need returns the path of tool, or skips the test saying which package
// has it. CI installs them (make deps).
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not found (Debian package %s; make deps installs it): %v", tool, pkg, err)
	}
	return p
}

// The alerting rules pass promtool, and alert on every finding of a
// critical or warning rule.
func TestPrometheusRules(t *testing.T) {
	promtool := need(t, "promtool", "prometheus")
	out, err := exec.Command(promtool, "check", "rules", "prometheus/whyslow.rules.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules says no SUCCESS:\n%s", out)
	}
	// A broken copy fails: the check can fail.
	bad := filepath.Join(t.TempDir(), "bad.yml")
	b, err := os.ReadFile("prometheus/whyslow.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, bytes.Replace(b, []byte(`whyslow_finding{rule="queue-freeze-stall"}`), []byte(`whyslow_finding{rule=`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", bad).CombinedOutput(); err == nil {
		t.Fatalf("promtool accepted a broken expression:\n%s", out)
	}
}

// The unit passes systemd-analyze verify without a warning. verify checks
// that ExecStart's binary exists: the copy checked runs the whyslow built
// here instead of /usr/local/bin/whyslow, nothing else changes.
func TestSystemdUnit(t *testing.T) {
	sa := need(t, "systemd-analyze", "systemd")
	b, err := os.ReadFile("systemd/whyslow.service")
	if err != nil {
		t.Fatal(err)
	}
	const bin = "/usr/local/bin/whyslow"
	if !bytes.Contains(b, []byte("ExecStart="+bin+" serve ")) {
		t.Fatalf("ExecStart does not run %s serve", bin)
	}
	dir := t.TempDir()
	built := filepath.Join(dir, "whyslow")
	build := exec.Command("go", "build", "-o", built, "../cmd/whyslow")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building whyslow: %v\n%s", err, out)
	}
	verify := func(name string, unit []byte) (string, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, unit, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	unit := bytes.ReplaceAll(b, []byte(bin+" "), []byte(built+" "))
	if out, err := verify("whyslow.service", unit); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// A misspelt key is reported: the check can fail.
	if out, _ := verify("whyslow-bad.service", bytes.Replace(unit, []byte("NoNewPrivileges="), []byte("NoNewPrivilege="), 1)); out == "" {
		t.Fatal("systemd-analyze verify said nothing about an unknown key")
	}
	// Reloading is SIGHUP, which reloads --rules.
	if !bytes.Contains(b, []byte("ExecReload=/bin/kill -HUP $MAINPID")) {
		t.Error("ExecReload does not send SIGHUP")
	}
}

// documents splits a YAML stream into its documents.
func documents(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(b, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(append(out, l...), '\n')
		}
	}
	return out
}

// decodeStrict decodes a YAML document as the API server does with
// fieldValidation=Strict: a duplicate key, a field the type does not have or
// a field spelt with another case is an error.
func decodeStrict(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// Every manifest decodes strictly (no unknown or duplicate field) into the
// Kubernetes type of its kind, and the DaemonSet has what the probes need.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	var ds *appsv1.DaemonSet
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documents(b) {
			var meta struct{ Kind string }
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s, document %d: %v", f, i+1, err)
			}
			var obj any
			switch meta.Kind {
			case "DaemonSet":
				ds = &appsv1.DaemonSet{}
				obj = ds
			case "Namespace":
				obj = &corev1.Namespace{}
			default:
				t.Fatalf("%s, document %d: kind %q: the test decodes DaemonSet and Namespace; add the type of this one", f, i+1, meta.Kind)
			}
			if err := decodeStrict(doc, obj); err != nil {
				t.Fatalf("%s, document %d (%s): %v", f, i+1, meta.Kind, err)
			}
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in kubernetes/")
	}
	checkDaemonSet(t, ds)

	// A misspelt field fails: the decoding is strict.
	b, _ := os.ReadFile("kubernetes/daemonset.yaml")
	for _, bad := range [][2]string{{"hostPID:", "hostPid:"}, {"readOnly: true", "readonly: true"}, {"  hostPID: true", "  hostPID: true\n      hostPID: true"}} {
		if err := decodeStrict(bytes.Replace(b, []byte(bad[0]), []byte(bad[1]), 1), &appsv1.DaemonSet{}); err == nil {
			t.Errorf("%q for %q decoded without an error", bad[1], bad[0])
		}
	}
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Error("hostPID is not set: the probes would not see the node's processes")
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("the selector does not match the pod template's labels")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if len(c.Args) < 3 || c.Args[0] != "serve" || !slices.Contains(c.Args, "--listen") {
		t.Errorf("args %q: want serve --listen ...", c.Args)
	}
	port := c.Args[slices.Index(c.Args, "--listen")+1]
	if !strings.HasPrefix(port, "0.0.0.0:") || len(c.Ports) == 0 || fmt.Sprint(c.Ports[0].ContainerPort) != strings.TrimPrefix(port, "0.0.0.0:") {
		t.Errorf("--listen %s and container ports %+v disagree", port, c.Ports)
	}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("a liveness or readiness probe does not ask /healthz: %+v", p)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	for _, want := range []corev1.Capability{"BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "NET_ADMIN"} {
		if !slices.Contains(sc.Capabilities.Add, want) {
			t.Errorf("capability %s not added", want)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Error("no memory limit")
	}
	mounts := map[string]string{} // mount path -> host path
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = hostPaths[m.Name]
	}
	for _, p := range []string{"/sys", "/sys/kernel/tracing"} {
		if mounts[p] != p {
			t.Errorf("%s is not the host's %s (mounts: %v)", p, p, mounts)
		}
	}
}
