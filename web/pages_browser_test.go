package web_test

import (
	"slices"
	"strings"
	"testing"
)

// TestIndexPage loads the front page at desktop and phone sizes (no
// sideways scrolling on a phone), follows every link on it to this node,
// and expects each page to load without a script error.
func TestIndexPage(t *testing.T) {
	// A whole node: the linked pages ask for its ICE servers and stats.
	n := startParley(t, "index")
	var got struct {
		pageLog
		Status   map[string]int      `json:"status"`
		Nav      map[string][]string `json:"nav"`
		Overflow map[string]int      `json:"overflow"`
	}
	runScript(t, []string{"PARLEY_URL=" + n.base}, "index.mjs", &got)
	// The dashboard asks the node for its figures, which a node without an
	// API key does not serve on its public address: the browser logs the
	// 404, and the page says where to look instead.
	var errs []string
	for _, e := range got.ConsoleErrors {
		if !strings.HasPrefix(e, "/dashboard.html: ") || !strings.Contains(e, "status of 404") {
			errs = append(errs, e)
		}
	}
	got.ConsoleErrors = errs
	got.check(t)
	pages := []string{"/chat.html", "/events.html", "/call.html", "/diagnostics.html", "/dashboard.html"}
	for _, page := range pages {
		if got.Status[page] != 200 {
			t.Errorf("the front page links %s: status %d, want 200 (links: %v)", page, got.Status[page], got.Status)
			continue
		}
		if got.Overflow[page] > 1 {
			t.Errorf("%s is %d px wider than a 390 px phone screen", page, got.Overflow[page])
		}
		for _, other := range pages {
			if !slices.Contains(got.Nav[page], other) {
				t.Errorf("%s's navigation does not link %s: %v", page, other, got.Nav[page])
			}
		}
	}
}
