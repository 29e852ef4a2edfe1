package main

import (
	"errors"
	"fmt"
	"log/slog"
	"syscall"

	"meshproxy/listener"
	"meshproxy/netfilter"
)

// checkLiveMode refuses to start a proxy whose mode disagrees with the
// interception rules of its network namespace: a redirect-mode proxy behind
// TPROXY rules (or the reverse) would recover wrong original destinations.
// Reading the rules needs CAP_NET_ADMIN, which a redirect-mode proxy
// usually lacks; then the check is skipped, with a debug line.
func checkLiveMode(want listener.Mode, log *slog.Logger) error {
	h, err := netfilter.Open("")
	if err != nil {
		log.Debug("mode check skipped: cannot open netlink", "err", err)
		return nil
	}
	defer h.Close()
	live, ok, err := h.LiveMode()
	switch {
	case errors.Is(err, syscall.EPERM):
		log.Debug("mode check skipped: reading the rules needs CAP_NET_ADMIN")
		return nil
	case err != nil:
		log.Warn("mode check skipped: cannot read the interception rules", "err", err)
		return nil
	case !ok:
		log.Warn("no meshproxy rules in this network namespace: nothing will be intercepted until meshproxy init runs")
		return nil
	case string(live) != string(want):
		return fmt.Errorf("--mode %s disagrees with the live rules, installed in %s mode: run with --mode %s, or re-run meshproxy init --mode %s", want, live, live, want)
	}
	return nil
}
