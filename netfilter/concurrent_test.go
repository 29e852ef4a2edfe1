package netfilter

import (
	"sync"
	"testing"
)

// Two inits racing in one namespace (a systemd unit and an operator, say)
// must both succeed and leave exactly the wanted state: the loser of a
// race to add the same policy rule finds it present, it does not fail, and
// its rollback does not take away what the winner added.
func TestConcurrentApply(t *testing.T) {
	path := newNS(t)
	c := testConfig(ModeTProxy)
	const rounds = 100
	for i := range rounds {
		var hs [2]*Handle
		for j := range hs {
			h, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			hs[j] = h
		}
		var wg sync.WaitGroup
		errs := make([]error, len(hs))
		for j, h := range hs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j] = h.Apply(c)
			}()
		}
		wg.Wait()
		for j, err := range errs {
			if err != nil {
				t.Fatalf("round %d: Apply #%d: %v", i, j, err)
			}
		}
		if err := hs[0].Check(c); err != nil {
			t.Fatalf("round %d: Check after concurrent Applies: %v", i, err)
		}
		if err := hs[0].Remove(c); err != nil {
			t.Fatal(err)
		}
	}
}
