package web_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// diagRow is one check as the diagnostics page shows it.
type diagRow struct {
	Check   string `json:"check"`
	Result  string `json:"result"` // pass, warn, fail or skip
	Pill    string `json:"pill"`
	Figure  string `json:"figure"`
	Meaning string `json:"meaning"`
}

// diagView is what a person sees of one run of the page.
type diagView struct {
	Rows    []diagRow `json:"rows"`
	Verdict struct {
		Result, Title, Text string
	} `json:"verdict"`
	Progress    string `json:"progress"`
	TokenOpen   bool   `json:"tokenFieldOpen"`
	Summary     string `json:"summary"`
	ScrollWidth int    `json:"scrollWidth"`
	Width       int    `json:"width"`
}

func (v diagView) row(check string) diagRow {
	for _, r := range v.Rows {
		if r.Check == check {
			return r
		}
	}
	return diagRow{Check: check, Result: "missing"}
}

// diagResult is what diagnostics-page.mjs reports: the run it started with
// "Run checks", the run on load, the copied summary and, when asked, the
// run at phone size.
type diagResult struct {
	pageLog
	diagView
	FirstRun    diagView  `json:"firstRun"`
	Phone       *diagView `json:"phone"`
	Copied      string    `json:"copied"`
	Clipboard   string    `json:"clipboard"`
	Screenshots []string  `json:"screenshots"`
}

// diagRun says how to open the diagnostics page.
type diagRun struct {
	base, name   string   // the node, and the screenshots' name prefix
	phone        bool     // also at 390x844
	token        string   // typed into the Token field before "Run checks"
	chromiumArgs []string // beside the usual flags
	// refused: the node turns the page's first requests away (401), which
	// the browser logs on the console by itself.
	refused bool
}

// runDiagnostics opens diagnostics.html in Chromium as r says, and returns
// what the page showed.
func runDiagnostics(t *testing.T, r diagRun) diagResult {
	t.Helper()
	args, err := json.Marshal(append([]string{}, r.chromiumArgs...))
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"PARLEY_URL=" + r.base, "PARLEY_DIAG_NAME=" + r.name, "PARLEY_CHROMIUM_ARGS=" + string(args)}
	if r.phone {
		env = append(env, "PARLEY_DIAG_PHONE=1")
	}
	if r.token != "" {
		env = append(env, "PARLEY_DIAG_TOKEN="+r.token)
	}
	var res diagResult
	runScript(t, env, "diagnostics-page.mjs", &res)
	for _, shot := range res.Screenshots {
		t.Logf("screenshot: %s", shot)
	}
	if r.refused {
		res.ConsoleErrors = slices.DeleteFunc(res.ConsoleErrors, func(e string) bool {
			return strings.HasSuffix(e, "Failed to load resource: the server responded with a status of 401 (Unauthorized)")
		})
	}
	res.check(t)
	return res
}

// checkRuns checks what every run shows whatever the network: each row
// settled with a figure and a sentence, and the summary that names them.
func checkRuns(t *testing.T, res diagResult, node string) {
	t.Helper()
	views := map[string]diagView{"the run on load": res.FirstRun, "the run of the button": res.diagView}
	if res.Phone != nil {
		views["the run at phone size"] = *res.Phone
	}
	for what, v := range views {
		if len(v.Rows) != 7 {
			t.Errorf("%s shows %d checks, want 7: %+v", what, len(v.Rows), v.Rows)
		}
		for _, r := range v.Rows {
			// A check skipped for want of the ICE servers has no figure.
			if r.Result == "pending" || r.Result == "running" || (r.Figure == "" && r.Result != "skip") || r.Meaning == "" {
				t.Errorf("%s: check %s is %q with figure %q and sentence %q; want it finished, with both", what, r.Check, r.Result, r.Figure, r.Meaning)
			}
		}
		if !strings.HasPrefix(v.Progress, "Finished at ") {
			t.Errorf("%s: progress line %q, want it finished", what, v.Progress)
		}
	}
	s := res.Summary
	for _, want := range []string{"Parley network diagnostics", "Node:    " + node, "Browser: Mozilla/5.0", "HeadlessChrome", "Verdict: " + res.Verdict.Title} {
		if !strings.Contains(s, want) {
			t.Errorf("the summary lacks %q:\n%s", want, s)
		}
	}
	for _, r := range res.Rows {
		if !strings.Contains(s, r.Figure) || !strings.Contains(s, r.Meaning) {
			t.Errorf("the summary lacks check %s's figure %q or sentence %q:\n%s", r.Check, r.Figure, r.Meaning, s)
		}
	}
	if res.Copied != "Copied to the clipboard." || res.Clipboard != s {
		t.Errorf("after Copy: the page says %q and the clipboard holds %q; want the summary copied, and said so", res.Copied, res.Clipboard)
	}
	if p := res.Phone; p != nil && p.ScrollWidth > p.Width {
		t.Errorf("at phone size the page is %d px wide in a %d px window: it scrolls sideways", p.ScrollWidth, p.Width)
	}
}

var (
	roundTripRE = regexp.MustCompile(`round trip [0-9.]+ ms`)
	relayRE     = regexp.MustCompile(`^relay 127\.0\.0\.1:\d+ allocated in [0-9.]+ ms · round trip [0-9.]+ ms over (UDP|TCP|TLS)$`)
)

// TestDiagnosticsLocal runs the page against a local node with STUN, TURN
// over UDP and TCP, and TURN over TLS with a certificate that only this
// test's Chromium trusts: every check passes, each relay is used over its
// own transport, and the summary is copied.
func TestDiagnosticsLocal(t *testing.T) {
	browserTools(t)
	cert, key, spki := selfSignedCert(t)
	p := startParley(t, "diag-local", "--tls-cert", cert, "--tls-key", key, "--turn-tls-addr", "127.0.0.1:0")
	// Chromium checks the certificate of turns: URLs as it does HTTPS'; this
	// flag makes it trust the test's certificate, and no other.
	res := runDiagnostics(t, diagRun{base: p.base, name: "diagnostics-local", phone: true,
		chromiumArgs: []string{"--ignore-certificate-errors-spki-list=" + spki}})
	checkRuns(t, res, "diag-local")

	for _, v := range []diagView{res.FirstRun, res.diagView, *res.Phone} {
		for _, r := range v.Rows {
			if r.Result != "pass" || r.Pill != "Pass" {
				t.Errorf("check %s: %s (%q: %s), want pass", r.Check, r.Result, r.Figure, r.Meaning)
			}
		}
	}
	if ws := res.row("websocket"); !roundTripRE.MatchString(ws.Figure) || !strings.Contains(ws.Figure, "node diag-local") {
		t.Errorf("WebSocket figure %q, want its round trip in ms and the node's name", ws.Figure)
	}
	if sse := res.row("sse"); !regexp.MustCompile(`an event delivered in [0-9.]+ ms`).MatchString(sse.Figure) {
		t.Errorf("SSE figure %q, want the time an event took to arrive", sse.Figure)
	}
	if ice := res.row("ice"); ice.Figure != "1 STUN, 3 TURN URLs · credentials valid 1 h" {
		t.Errorf("ICE servers figure %q, want 1 STUN and 3 TURN URLs (UDP, TCP, TLS)", ice.Figure)
	}
	if stun := res.row("stun"); !regexp.MustCompile(`^reflexive address 127\.0\.0\.1:\d+ · answered in`).MatchString(stun.Figure) {
		t.Errorf("STUN figure %q, want the reflexive address the node saw, 127.0.0.1:port", stun.Figure)
	}
	for _, tr := range []string{"UDP", "TCP", "TLS"} {
		r := res.row("turn-" + strings.ToLower(tr))
		m := relayRE.FindStringSubmatch(r.Figure)
		if m == nil || m[1] != tr {
			t.Errorf("TURN over %s figure %q, want a relay, its allocation time and a round trip over %s", tr, r.Figure, tr)
		}
	}
	if res.Verdict.Result != "pass" || res.Verdict.Title != "Calls will work from this network" {
		t.Errorf("verdict %s %q, want pass \"Calls will work from this network\"", res.Verdict.Result, res.Verdict.Title)
	}

	// The node saw an allocation over each transport: the page's relays were
	// real, and each went over the transport its row names.
	for _, tr := range []string{"udp", "tcp", "tls"} {
		if n := turnAllocations(t, p, tr); n < 1 {
			t.Errorf("the node created %d TURN allocations over %s, want at least 1", n, tr)
		}
	}
}

// TestDiagnosticsUDPBlocked runs the page in a Chromium whose WebRTC may
// not use UDP (the policy of a browser or network that allows TCP only),
// against a node without TURN over TLS: the page reports UDP blocked, says
// calls will use TURN over TCP, which passes, and that TLS is not offered.
func TestDiagnosticsUDPBlocked(t *testing.T) {
	browserTools(t)
	p := startParley(t, "diag-noudp")
	res := runDiagnostics(t, diagRun{base: p.base, name: "diagnostics-udp-blocked",
		chromiumArgs: []string{"--webrtc-ip-handling-policy=disable_non_proxied_udp"}})
	checkRuns(t, res, "diag-noudp")

	for _, v := range []diagView{res.FirstRun, res.diagView} {
		want := map[string]string{"websocket": "pass", "sse": "pass", "ice": "pass", "stun": "fail", "turn-udp": "fail", "turn-tcp": "pass", "turn-tls": "skip"}
		for _, r := range v.Rows {
			if r.Result != want[r.Check] {
				t.Errorf("check %s: %s (%q: %s), want %s", r.Check, r.Result, r.Figure, r.Meaning, want[r.Check])
			}
		}
	}
	if udp := res.row("turn-udp"); udp.Pill != "Fail" || udp.Meaning != "UDP is blocked: calls will use TURN over TCP, expect higher latency." {
		t.Errorf("TURN over UDP: %s %q, want Fail and the sentence that calls will use TURN over TCP", udp.Pill, udp.Meaning)
	}
	if stun := res.row("stun"); !strings.HasPrefix(stun.Meaning, "STUN did not answer: UDP to the node is blocked") {
		t.Errorf("STUN sentence %q, want it to say UDP is blocked", stun.Meaning)
	}
	if tcp := res.row("turn-tcp"); !relayRE.MatchString(tcp.Figure) || !strings.HasSuffix(tcp.Figure, "over TCP") {
		t.Errorf("TURN over TCP figure %q, want a relay and a round trip over TCP", tcp.Figure)
	}
	if tls := res.row("turn-tls"); tls.Pill != "Not offered" || !strings.HasPrefix(tls.Meaning, "TURN over TLS is not offered by this node") {
		t.Errorf("TURN over TLS: %s %q, want \"Not offered\" and the sentence saying so", tls.Pill, tls.Meaning)
	}
	if v := res.Verdict; v.Result != "warn" || v.Title != "Calls will work, relayed over TCP" {
		t.Errorf("verdict %s %q, want warn \"Calls will work, relayed over TCP\"", v.Result, v.Title)
	}

	// UDP really never left the browser: the node relayed over TCP only.
	if n := turnAllocations(t, p, "udp"); n != 0 {
		t.Errorf("the node created %d TURN allocations over UDP, want none with UDP blocked", n)
	}
	if n := turnAllocations(t, p, "tcp"); n < 1 {
		t.Errorf("the node created %d TURN allocations over TCP, want at least 1", n)
	}
}

// TestDiagnosticsToken runs the page against a node that checks tokens:
// without one, every check that asks the node says to paste a token, and
// the field for it is open; with one typed in, "Run checks" passes them.
func TestDiagnosticsToken(t *testing.T) {
	browserTools(t)
	const secret = "diagnostics-test-secret-0123456789"
	p := startParley(t, "diag-jwt", "--jwt-secret", secret)
	out, err := exec.Command(parleyBinary(t), "token", "--jwt-secret", secret, "--user", "alice").Output()
	if err != nil {
		t.Fatalf("parley token: %v", err)
	}
	res := runDiagnostics(t, diagRun{base: p.base, name: "diagnostics-token", token: strings.TrimSpace(string(out)), refused: true})
	checkRuns(t, res, "diag-jwt")

	const paste = "This node checks tokens, and none was given: paste a JWT into the Token field above and run the checks again."
	first := res.FirstRun
	for _, check := range []string{"websocket", "sse", "ice"} {
		if r := first.row(check); r.Result != "fail" || r.Meaning != paste {
			t.Errorf("without a token, check %s: %s %q, want fail and %q", check, r.Result, r.Meaning, paste)
		}
	}
	for _, check := range []string{"stun", "turn-udp", "turn-tcp", "turn-tls"} {
		if r := first.row(check); r.Result != "skip" || r.Pill != "Skipped" {
			t.Errorf("without a token, check %s: %s (%s), want Skipped: there are no ICE servers to try", check, r.Result, r.Pill)
		}
	}
	if !first.TokenOpen {
		t.Errorf("without a token the Token field stayed closed, want it open for the sentence that points at it")
	}
	if v := first.Verdict; v.Result != "fail" || v.Title != "Calls cannot be set up from this network" || !strings.HasSuffix(v.Text, paste) {
		t.Errorf("without a token, verdict %s %q: %q; want fail, saying to paste a token", v.Result, v.Title, v.Text)
	}

	want := map[string]string{"websocket": "pass", "sse": "pass", "ice": "pass", "stun": "pass", "turn-udp": "pass", "turn-tcp": "pass", "turn-tls": "skip"}
	for _, r := range res.Rows {
		if r.Result != want[r.Check] {
			t.Errorf("with a token, check %s: %s (%q: %s), want %s", r.Check, r.Result, r.Figure, r.Meaning, want[r.Check])
		}
	}
	if v := res.Verdict; v.Result != "pass" {
		t.Errorf("with a token, verdict %s %q, want pass", v.Result, v.Title)
	}
}

// turnAllocations reads how many TURN allocations p created over transport
// from its metrics.
func turnAllocations(t *testing.T, p *parleyProc, transport string) int {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^parley_turn_allocations_created_total\{transport="` + transport + `"\} (\d+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no parley_turn_allocations_created_total for %s in the node's metrics", transport)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// selfSignedCert writes a certificate for 127.0.0.1 and localhost and its
// key into a temporary directory, and returns their paths and the base64
// SHA-256 of its public key, as Chromium's --ignore-certificate-errors-spki-list
// takes it.
func selfSignedCert(t *testing.T) (certFile, keyFile, spki string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "parley diagnostics test"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return certFile, keyFile, base64.StdEncoding.EncodeToString(sum[:])
}
