package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Plot geometry (pixels).
const (
	svgW, svgH  = 960, 560
	padL, padR  = 90, 230
	padT, padB  = 70, 80
	plotW       = svgW - padL - padR
	plotH       = svgH - padT - padB
	maxXDecades = 4 // 99.99th percentile
)

var colors = map[string]string{
	"direct":         "#555555",
	"meshproxy":      "#1f77b4",
	"meshproxy-mtls": "#d62728",
	"haproxy-tcp":    "#2ca02c",
	"haproxy-http":   "#9467bd",
	"stunnel":        "#ff7f0e",
	"go-relay":       "#8c564b",
}

// plot draws the fixed-rate latency percentile curves: x is the
// percentile on a log scale of 1/(1-p) (50%, 90%, 99%, ... evenly spaced),
// y is latency in milliseconds on a log scale.
func plot(o *output) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, pts := range o.Curves {
		for _, c := range pts {
			ms := c.Micros / 1e3
			if ms > 0 {
				lo, hi = math.Min(lo, ms), math.Max(hi, ms)
			}
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0.1, 1
	}
	// Round the y range out to 1-2-5 steps.
	yLo, yHi := niceDown(lo), niceUp(hi)
	if yHi <= yLo {
		yHi = yLo * 10
	}
	xOf := func(pct float64) float64 {
		d := 0.0
		if pct < 100 {
			d = math.Log10(1 / (1 - pct/100))
		}
		d = math.Min(d, maxXDecades)
		return padL + d/maxXDecades*plotW
	}
	yOf := func(ms float64) float64 {
		ms = math.Max(ms, yLo)
		return padT + plotH - (math.Log10(ms)-math.Log10(yLo))/(math.Log10(yHi)-math.Log10(yLo))*plotH
	}

	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n", svgW, svgH, svgW, svgH)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := fmt.Sprintf("HTTP/1.1 latency at a fixed %v req/s (open loop, %v keep-alive connections, %vs)", o.Settings["rate"], o.Settings["concurrency"], o.Settings["load_seconds"])
	p(`<text x="%d" y="30" font-size="18" font-weight="bold">%s</text>`+"\n", padL, html.EscapeString(title))
	p(`<text x="%d" y="52" font-size="13" fill="#444">%s</text>`+"\n", padL, html.EscapeString("latency from each request's scheduled send time; meshproxy's HTTP path: "+o.MeshproxyHTTP+"; "+o.Date))

	// Grid and axes.
	for _, t := range yTicks(yLo, yHi) {
		y := yOf(t)
		p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3"/>`+"\n", padL, y, padL+plotW, y)
		p(`<text x="%d" y="%.1f" font-size="13" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padL-8, y, tickLabel(t))
	}
	for _, t := range []struct {
		pct   float64
		label string
	}{{0, "0%"}, {50, "50%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}} {
		x := xOf(t.pct)
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e3e3e3"/>`+"\n", x, padT, x, padT+plotH)
		p(`<text x="%.1f" y="%d" font-size="13" text-anchor="middle">%s</text>`+"\n", x, padT+plotH+20, t.label)
	}
	p(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", padL, padT, plotW, plotH)
	p(`<text x="%d" y="%d" font-size="14" text-anchor="middle">percentile (log scale of 1/(1−p))</text>`+"\n", padL+plotW/2, padT+plotH+50)
	p(`<text transform="translate(%d,%d) rotate(-90)" font-size="14" text-anchor="middle">latency, ms (log scale)</text>`+"\n", 24, padT+plotH/2)

	// Curves and legend.
	ly := padT + 10
	for _, s := range o.Setups {
		pts := o.Curves[s.Key]
		if len(pts) == 0 {
			continue
		}
		col := colors[s.Key]
		var path strings.Builder
		for i, c := range pts {
			cmd := "L"
			if i == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, xOf(c.Percentile), yOf(c.Micros/1e3))
		}
		dash := ""
		if s.Key == "direct" {
			dash = ` stroke-dasharray="6,4"`
		}
		p(`<path d="%s" fill="none" stroke="%s" stroke-width="2.5"%s/>`+"\n", strings.TrimSpace(path.String()), col, dash)
		lx := padL + plotW + 20
		p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"%s/>`+"\n", lx, ly, lx+28, ly, col, dash)
		p(`<text x="%d" y="%d" font-size="13" dominant-baseline="middle">%s</text>`+"\n", lx+36, ly, html.EscapeString(s.Label))
		if f := findFigure(o, "rate_p99_ms"); f != nil && f.Values[s.Key] != nil {
			p(`<text x="%d" y="%d" font-size="11" fill="#555" dominant-baseline="middle">p99 %s ms</text>`+"\n", lx+36, ly+16, format(f.Values[s.Key]))
		}
		ly += 40
	}
	p("</svg>\n")
	return b.String()
}

func findFigure(o *output, key string) *figure {
	for _, f := range o.Figures {
		if f.Key == key {
			return f
		}
	}
	return nil
}

// steps are the 1-2-5 mantissas of the y ticks.
var steps = []float64{1, 2, 5}

// niceDown returns the largest 1-2-5 value at or below v.
func niceDown(v float64) float64 {
	e := math.Floor(math.Log10(v))
	for i := len(steps) - 1; i >= 0; i-- {
		if t := steps[i] * math.Pow(10, e); t <= v*(1+1e-9) {
			return t
		}
	}
	return math.Pow(10, e)
}

// niceUp returns the smallest 1-2-5 value at or above v.
func niceUp(v float64) float64 {
	e := math.Floor(math.Log10(v))
	for _, s := range append(steps, 10) {
		if t := s * math.Pow(10, e); t >= v*(1-1e-9) {
			return t
		}
	}
	return math.Pow(10, e+1)
}

// yTicks lists the 1-2-5 values from lo to hi.
func yTicks(lo, hi float64) []float64 {
	var ts []float64
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, s := range steps {
			t := s * math.Pow(10, e)
			if t >= lo*(1-1e-9) && t <= hi*(1+1e-9) {
				ts = append(ts, t)
			}
		}
	}
	return ts
}

func tickLabel(ms float64) string {
	if ms >= 1 {
		return fmt.Sprintf("%g", ms)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", ms), "0"), ".")
}
