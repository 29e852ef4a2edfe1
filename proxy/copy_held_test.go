package proxy

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// An opaque copy moves messages inside one wait on the source (readCopy)
// and waits again without a read first only when the read left nothing:
// a message and the end of stream already in the socket when the wait
// began (their readiness reset by it) are both delivered, the end as the
// copy's end, though the read that takes the message takes the FIN too
// and returns fewer bytes than it asked for.
func TestCopyMessageThenEndInOneRead(t *testing.T) {
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	if _, err := srcW.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := srcW.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // both are in srcR's socket
	var total atomic.Int64
	errc := runCopy(proxyCopy, dstW, srcR, time.Hour, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}), &total)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("copy = %v; want nil at the source's end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the copy still waits 5 s after the source's end: the FIN read with the message went unseen")
	}
	dstW.CloseWrite()
	dstR.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(dstR)
	if err != nil || string(got) != "last words" {
		t.Fatalf("delivered %q, %v; want \"last words\"", got, err)
	}
	if total.Load() != int64(len("last words")) {
		t.Errorf("counted %d bytes; want %d", total.Load(), len("last words"))
	}
}

// Messages a destination cannot take at once (it stopped reading) are
// finished outside the wait, where the write waits for room: every byte
// arrives, in order, once the destination reads again.
func TestCopyMessagesToSlowReader(t *testing.T) {
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	// A small send buffer: the destination is full after a few
	// messages.
	dstW.SetWriteBuffer(16 << 10)
	var total atomic.Int64
	errc := runCopy(proxyCopy, dstW, srcR, time.Hour, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}), &total)
	const msgs, size = 4000, 1000
	want := make([]byte, 0, msgs*size)
	for i := range msgs {
		want = append(want, bytes.Repeat([]byte{byte(i % 251)}, size)...)
	}
	sent := make(chan error, 1)
	go func() {
		// Small messages with pauses (the copy's message mode), bounded
		// in count; the destination reads none for the first 300 ms.
		for i := range msgs {
			if _, err := srcW.Write(want[i*size : (i+1)*size]); err != nil {
				sent <- err
				return
			}
			if i%10 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
		sent <- srcW.CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond)
	dstR.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(dstR, got); err != nil {
		t.Fatalf("reading what the copy delivered: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes delivered differ from the bytes sent")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("copy = %v; want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the copy did not end at the source's end")
	}
	if total.Load() != int64(len(want)) {
		t.Errorf("counted %d bytes; want %d", total.Load(), len(want))
	}
}
