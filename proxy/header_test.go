package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Port: 8080, Protocol: ProtocolHTTP1, Name: "web.default.svc.cluster.local"},
		{Port: 1, Protocol: ProtocolOpaque},
		{Port: 65535, Protocol: ProtocolH2, Name: strings.Repeat("x", MaxServiceNameLen)},
	} {
		b, err := EncodeHeader(h)
		if err != nil {
			t.Fatalf("EncodeHeader(%+v): %v", h, err)
		}
		if len(b) > MaxHeaderSize {
			t.Errorf("EncodeHeader(%+v) = %d bytes; want at most %d", h, len(b), MaxHeaderSize)
		}
		// The stream after the header must stay unread.
		r := bytes.NewReader(append(b, "rest"...))
		got, err := DecodeHeader(r)
		if err != nil {
			t.Fatalf("DecodeHeader(EncodeHeader(%+v)): %v", h, err)
		}
		if got != h {
			t.Errorf("round trip = %+v; want %+v", got, h)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "rest" {
			t.Errorf("after the header the stream holds %q; want %q", rest, "rest")
		}
	}
}

func TestEncodeHeaderRejects(t *testing.T) {
	for name, h := range map[string]Header{
		"port 0":        {Port: 0, Protocol: ProtocolOpaque},
		"tls protocol":  {Port: 1, Protocol: ProtocolTLS},
		"no protocol":   {Port: 1},
		"long name":     {Port: 1, Protocol: ProtocolOpaque, Name: strings.Repeat("x", 256)},
		"space in name": {Port: 1, Protocol: ProtocolOpaque, Name: "a b"},
		"control byte":  {Port: 1, Protocol: ProtocolOpaque, Name: "a\nb"},
	} {
		if _, err := EncodeHeader(h); !errors.Is(err, ErrHeaderInvalid) {
			t.Errorf("%s: EncodeHeader = %v; want ErrHeaderInvalid", name, err)
		}
	}
}

func TestDecodeHeaderErrors(t *testing.T) {
	good, _ := EncodeHeader(Header{Port: 8080, Protocol: ProtocolHTTP1, Name: "svc"})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrHeaderTruncated},
		{"prefix cut", good[:3], ErrHeaderTruncated},
		{"body cut", good[:len(good)-1], ErrHeaderTruncated},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'G'; return b }), ErrHeaderMagic},
		{"http request", []byte("GET / HTTP/1.1\r\n\r\n"), ErrHeaderMagic},
		{"version 2", mod(func(b []byte) []byte { b[2] = 2; return b }), ErrHeaderVersion},
		{"version 0", mod(func(b []byte) []byte { b[2] = 0; return b }), ErrHeaderVersion},
		{"oversized", []byte{'M', 'P', 1, 0xff, 0xff}, ErrHeaderTooLarge},
		{"just oversized", []byte{'M', 'P', 1, byte((MaxHeaderSize - 4) >> 8), byte((MaxHeaderSize - 4) & 0xff)}, ErrHeaderTooLarge},
		{"body too short", []byte{'M', 'P', 1, 0, 3, 0x1f, 0x90, 1}, ErrHeaderInvalid},
		{"port 0", mod(func(b []byte) []byte { b[5], b[6] = 0, 0; return b }), ErrHeaderInvalid},
		{"protocol 0", mod(func(b []byte) []byte { b[7] = 0; return b }), ErrHeaderInvalid},
		{"protocol 9", mod(func(b []byte) []byte { b[7] = 9; return b }), ErrHeaderInvalid},
		{"name length too long", mod(func(b []byte) []byte { b[8] = 4; return b }), ErrHeaderInvalid},
		{"name length too short", mod(func(b []byte) []byte { b[8] = 2; return b }), ErrHeaderInvalid},
		{"name with NUL", mod(func(b []byte) []byte { b[9] = 0; return b }), ErrHeaderInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := DecodeHeader(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Errorf("DecodeHeader = %+v, %v; want %v", h, err, tc.want)
			}
		})
	}
}

// TestDecodeHeaderReadsNoMore: an oversized declared length is refused
// after the 5-byte prefix, without reading (or waiting for) the body.
func TestDecodeHeaderReadsNoMore(t *testing.T) {
	r := &countingReader{r: bytes.NewReader(append([]byte{'M', 'P', 1, 0xff, 0xff}, make([]byte, 70000)...))}
	if _, err := DecodeHeader(r); !errors.Is(err, ErrHeaderTooLarge) {
		t.Fatalf("DecodeHeader = %v; want ErrHeaderTooLarge", err)
	}
	if r.n != headerPrefixLen {
		t.Errorf("read %d bytes; want %d", r.n, headerPrefixLen)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

func FuzzDecodeHeader(f *testing.F) {
	for _, h := range []Header{
		{Port: 8080, Protocol: ProtocolHTTP1, Name: "web"},
		{Port: 5432, Protocol: ProtocolOpaque},
		{Port: 443, Protocol: ProtocolH2, Name: strings.Repeat("n", 255)},
	} {
		b, _ := EncodeHeader(h)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("MP"))
	f.Add([]byte{'M', 'P', 1, 0xff, 0xff})
	f.Add([]byte{'M', 'P', 1, 0, 4, 0, 0, 1, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &countingReader{r: bytes.NewReader(in)}
		h, err := DecodeHeader(r)
		if r.n > MaxHeaderSize {
			t.Fatalf("read %d bytes; the header max is %d", r.n, MaxHeaderSize)
		}
		if err != nil {
			return
		}
		b, err := EncodeHeader(h)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", h, err)
		}
		if !bytes.Equal(b, in[:r.n]) {
			t.Fatalf("re-encoding %+v = %x; want the bytes read %x", h, b, in[:r.n])
		}
	})
}
