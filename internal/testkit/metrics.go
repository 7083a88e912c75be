package testkit

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Eventually polls cond until it returns nil or the timeout passes, then
// fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitLog waits until logs holds want. A line is written after the
// action it reports: a test that saw the action waits for its line.
func WaitLog(t testing.TB, logs fmt.Stringer, want string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() error {
		if !strings.Contains(logs.String(), want) {
			return fmt.Errorf("%q is not logged:\n%s", want, logs)
		}
		return nil
	})
}

// Scrape returns a /metrics page.
func Scrape(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// MetricValue reads one series' value ("name" or `name{labels}`, as
// printed) from a /metrics page; the test fails when there is none.
func MetricValue(t testing.TB, page, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in:\n%s", series, page)
	return 0
}
