package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServerSample is what a warden server's /metrics said about its own
// process at one moment.
type ServerSample struct {
	HeapInuse  float64 // bytes (go_memstats_heap_inuse_bytes)
	RSS        float64 // bytes (process_resident_memory_bytes)
	CPUSeconds float64 // process_cpu_seconds_total
	Goroutines float64 // go_goroutines
}

// Scrape reads a ServerSample from a Prometheus text endpoint.
func Scrape(ctx context.Context, url string) (ServerSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ServerSample{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ServerSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ServerSample{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var s ServerSample
	want := map[string]*float64{
		"go_memstats_heap_inuse_bytes":  &s.HeapInuse,
		"process_resident_memory_bytes": &s.RSS,
		"process_cpu_seconds_total":     &s.CPUSeconds,
		"go_goroutines":                 &s.Goroutines,
	}
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if p, hit := want[name]; ok && hit {
			if *p, err = strconv.ParseFloat(strings.TrimSpace(val), 64); err != nil {
				return ServerSample{}, fmt.Errorf("%s: %s: %v", url, name, err)
			}
			found++
		}
	}
	if err := sc.Err(); err != nil {
		return ServerSample{}, err
	}
	if found != len(want) {
		return ServerSample{}, fmt.Errorf("%s: the Go runtime and process metrics are missing", url)
	}
	return s, nil
}

// peakSampler scrapes a server every interval and keeps the largest heap
// and RSS seen.
type peakSampler struct {
	mu   sync.Mutex
	peak ServerSample
	stop chan struct{}
	done chan struct{}
}

func samplePeaks(ctx context.Context, url string, every time.Duration) *peakSampler {
	p := &peakSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if s, err := Scrape(ctx, url); err == nil {
				p.mu.Lock()
				p.peak.HeapInuse = max(p.peak.HeapInuse, s.HeapInuse)
				p.peak.RSS = max(p.peak.RSS, s.RSS)
				p.peak.Goroutines = max(p.peak.Goroutines, s.Goroutines)
				p.mu.Unlock()
			}
			select {
			case <-t.C:
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return p
}

func (p *peakSampler) Stop() ServerSample {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}
