package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Readiness and lifecycle notifications to systemd (sd_notify), for
// scripts/systemd/meshproxy.service, which is Type=notify. Every function is
// a no-op returning nil when NOTIFY_SOCKET is unset, so "meshproxy run"
// works the same outside systemd. A failed notification is worth a warning
// in the log, never a reason to stop serving: callers log the error and go
// on.
//
// NOTIFY_SOCKET is left in the environment (unsetEnvironment false), so
// the process can notify more than once: READY=1, then RELOADING=1/READY=1
// around each reload, then STOPPING=1.

// notifyReady tells systemd the proxy is ready (READY=1): call it when
// /ready turns true, and again when a reload has finished.
func notifyReady() error {
	return sdNotify(daemon.SdNotifyReady)
}

// notifyStopping tells systemd the proxy has begun shutting down
// (STOPPING=1): call it when SIGTERM arrives, before draining.
func notifyStopping() error {
	return sdNotify(daemon.SdNotifyStopping)
}

// notifyReloading tells systemd the proxy is reloading its configuration
// (RELOADING=1, with the MONOTONIC_USEC timestamp newer systemd wants): call
// it when SIGHUP arrives, and notifyReady when the reload is done (also
// when it failed and the old configuration stays in force).
func notifyReloading() error {
	return sdNotify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// notifyStatus sets the one-line status "systemctl status" shows
// (STATUS=...), for example "waiting for a certificate".
func notifyStatus(status string) error {
	return sdNotify("STATUS=" + status)
}

// sdNotify sends one notification; without NOTIFY_SOCKET it does nothing.
func sdNotify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("notifying systemd (NOTIFY_SOCKET): %w", err)
	}
	return nil
}

// runWatchdog pings systemd's watchdog (WATCHDOG=1) at half the interval
// systemd asks for (WatchdogSec= in the unit, seen as WATCHDOG_USEC) until
// ctx is done. Without a watchdog it returns at once. Run it in its own
// goroutine once the proxy serves; failed pings are logged.
func runWatchdog(ctx context.Context, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unusable; not pinging", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		if err := sdNotify(daemon.SdNotifyWatchdog); err != nil {
			log.Warn("systemd watchdog ping failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
