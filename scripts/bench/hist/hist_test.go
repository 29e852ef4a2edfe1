package hist

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every value lands in a bucket whose bound is at or above it and
	// within 1/128 of it; bucket bounds increase.
	vals := []int64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 1 << 20, 1<<20 + 1, 123456789, math.MaxInt64 / 3, math.MaxInt64}
	for _, v := range vals {
		i := index(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("index(%d) = %d; want in [0,%d)", v, i, numBuckets)
		}
		u := upper(i)
		if u < v {
			t.Errorf("upper(index(%d)) = %d; want >= %d", v, u, v)
		}
		if v >= subCount && float64(u-v) > float64(v)/subCount {
			t.Errorf("upper(index(%d)) = %d: error %.4f%%; want <= %.4f%%", v, u, 100*float64(u-v)/float64(v), 100.0/subCount)
		}
		if v < subCount && u != v {
			t.Errorf("upper(index(%d)) = %d; want exact below %d", v, u, subCount)
		}
	}
	for i := 1; i < numBuckets; i++ {
		if upper(i) <= upper(i-1) {
			t.Fatalf("upper(%d) = %d <= upper(%d) = %d", i, upper(i), i-1, upper(i-1))
		}
		if index(upper(i)) != i {
			t.Fatalf("index(upper(%d)) = %d", i, index(upper(i)))
		}
	}
}

func TestQuantilesMatchSortedSamples(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var all []int64
	for range 100000 {
		// Log-normal-ish latencies from 10µs to seconds, in ns.
		v := int64(math.Exp(r.NormFloat64()*1.5 + 12))
		h.Record(v)
		all = append(all, v)
	}
	slices.Sort(all)
	for _, p := range []float64{1, 50, 90, 99, 99.9, 99.99} {
		rank := int(math.Ceil(p/100*float64(len(all)))) - 1
		want := all[rank]
		got := h.Quantile(p)
		if got < want || float64(got-want) > float64(want)/subCount+1 {
			t.Errorf("Quantile(%v) = %d; want %d (within 1/%d above)", p, got, want, subCount)
		}
	}
	if h.Quantile(0) != all[0] || h.Quantile(100) != all[len(all)-1] {
		t.Errorf("Quantile(0), Quantile(100) = %d, %d; want %d, %d", h.Quantile(0), h.Quantile(100), all[0], all[len(all)-1])
	}
	if h.Count() != uint64(len(all)) {
		t.Errorf("Count = %d; want %d", h.Count(), len(all))
	}
}

func TestMergeEqualsRecordingTogether(t *testing.T) {
	var a, b, both Histogram
	for i := int64(0); i < 5000; i++ {
		v := i * i
		both.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	a.Merge(&b)
	if a.Count() != both.Count() || a.Min() != both.Min() || a.Max() != both.Max() || a.Mean() != both.Mean() {
		t.Fatalf("merged count/min/max/mean = %d/%d/%d/%v; want %d/%d/%d/%v",
			a.Count(), a.Min(), a.Max(), a.Mean(), both.Count(), both.Min(), both.Max(), both.Mean())
	}
	for _, p := range []float64{0, 50, 99, 99.9, 100} {
		if a.Quantile(p) != both.Quantile(p) {
			t.Errorf("merged Quantile(%v) = %d; want %d", p, a.Quantile(p), both.Quantile(p))
		}
	}
}

func TestEmptyAndNegative(t *testing.T) {
	var h Histogram
	if h.Quantile(50) != 0 || h.Mean() != 0 || h.Count() != 0 {
		t.Fatalf("empty histogram: Quantile(50)=%d Mean=%v Count=%d; want zeros", h.Quantile(50), h.Mean(), h.Count())
	}
	h.Record(-5)
	if h.Quantile(50) != 0 || h.Min() != 0 {
		t.Errorf("after Record(-5): Quantile(50)=%d Min=%d; want 0", h.Quantile(50), h.Min())
	}
}
