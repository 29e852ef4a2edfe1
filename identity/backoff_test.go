package identity

import (
	"testing"
	"time"
)

// TestRetryBeforeExpiry: a failed refresh is retried before the
// certificate in use expires, however far the backoff has grown; with
// plenty of life left, or none, the backoff stands.
func TestRetryBeforeExpiry(t *testing.T) {
	const floor = 500 * time.Millisecond
	for _, tc := range []struct {
		name             string
		wait, left, want time.Duration
	}{
		{"plenty of life left", 2 * time.Second, time.Hour, 2 * time.Second},
		{"backoff past the expiry", 2 * time.Second, 1400 * time.Millisecond, 700 * time.Millisecond},
		{"backoff past half the life left", 2 * time.Second, 3 * time.Second, 1500 * time.Millisecond},
		{"little left: no sooner than the floor", 2 * time.Second, 200 * time.Millisecond, floor},
		{"short wait stands", 300 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond},
		{"expired: backoff as usual", 8 * time.Second, -time.Second, 8 * time.Second},
	} {
		if got := beforeExpiry(tc.wait, tc.left, floor); got != tc.want {
			t.Errorf("%s: beforeExpiry(%v, %v, %v) = %v; want %v", tc.name, tc.wait, tc.left, floor, got, tc.want)
		}
	}
}
