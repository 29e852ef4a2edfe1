// Package hist is a small log-linear latency histogram for the benchmark
// programs under scripts/bench: constant memory whatever the sample count,
// exact below 128 units and within 1/128 (0.8%) of the true value above.
//
// Values are int64 in any unit the caller picks (the programs use
// nanoseconds). Quantiles report the highest value of the bucket the rank
// falls in (never below the true value, as HdrHistogram does), capped at the
// largest value recorded.
package hist

import (
	"math"
	"math/bits"
)

// subBits is log2 of the sub-buckets per power of two: 128 of them, so a
// bucket is at most 1/128 of its values wide.
const subBits = 7

const subCount = 1 << subBits

// numBuckets covers every non-negative int64: the exact values below
// subCount, then subCount buckets for each leading bit from 2^subBits up
// to 2^62.
const numBuckets = (64 - subBits) * subCount

// Histogram counts values in log-linear buckets. The zero value is an
// empty histogram ready to use. It is not safe for concurrent use: give
// each goroutine its own and Merge them.
type Histogram struct {
	counts [numBuckets]uint64
	total  uint64
	min    int64
	max    int64
	sum    float64
}

// index returns the bucket of v (v >= 0).
func index(v int64) int {
	u := uint64(v)
	if u < subCount {
		return int(u)
	}
	msb := bits.Len64(u) - 1
	shift := msb - subBits
	mant := u >> uint(shift) // in [subCount, 2*subCount)
	return (shift+1)*subCount + int(mant-subCount)
}

// upper returns the highest value that falls in bucket i.
func upper(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	shift := i/subCount - 1
	mant := uint64(i%subCount + subCount)
	return int64((mant+1)<<uint(shift) - 1)
}

// Record adds one value; negative values count as zero.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[index(v)]++
	if h.total == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.total++
	h.sum += float64(v)
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.total == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.total += o.total
	h.sum += o.sum
}

// Count returns how many values were recorded.
func (h *Histogram) Count() uint64 { return h.total }

// Max returns the largest value recorded (0 when empty).
func (h *Histogram) Max() int64 { return h.max }

// Min returns the smallest value recorded (0 when empty).
func (h *Histogram) Min() int64 { return h.min }

// Mean returns the average of the values recorded (0 when empty).
func (h *Histogram) Mean() float64 {
	if h.total == 0 {
		return 0
	}
	return h.sum / float64(h.total)
}

// Quantile returns the value at percentile p (0 to 100): the smallest
// bucket bound that at least p% of the values are at or below. Quantile(0)
// is the smallest value, Quantile(100) the largest; an empty histogram
// gives 0.
func (h *Histogram) Quantile(p float64) int64 {
	if h.total == 0 {
		return 0
	}
	if p <= 0 {
		return h.min
	}
	if p >= 100 {
		return h.max
	}
	rank := uint64(math.Ceil(p / 100 * float64(h.total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := upper(i)
			if v > h.max {
				v = h.max
			}
			if v < h.min {
				v = h.min
			}
			return v
		}
	}
	return h.max
}
