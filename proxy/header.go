package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The transport header is the first thing a client proxy writes on a
// mesh connection, right after the TLS handshake; the server proxy reads
// it before anything else to learn where to deliver the stream. Wire
// format (big endian):
//
//	offset size field
//	0      2    magic "MP"
//	2      1    version (1)
//	3      2    body length L (at most MaxHeaderSize-5)
//	5      2    target port (not 0)
//	7      1    protocol (1 opaque, 2 http/1, 3 h2, 4 mesh-h2)
//	8      1    service name length N
//	9      N    service name (printable ASCII, no spaces; may be empty)
//
// L must equal 4+N exactly: version 1 has no extensions, a later version
// adds them with a new version number.
const (
	// MaxHeaderSize is the largest transport header accepted, in bytes.
	MaxHeaderSize = 1024
	// HeaderVersion is the transport header version this proxy writes.
	HeaderVersion = 1
	// MaxServiceNameLen is the longest service name a header may carry.
	MaxServiceNameLen = 255

	headerMagic0, headerMagic1 = 'M', 'P'
	headerPrefixLen            = 5 // magic, version, body length
	headerFixedBody            = 4 // port, protocol, name length
)

// Header is the mesh transport header.
type Header struct {
	// Port is the port on the server's host the stream is for. Never 0.
	Port uint16
	// Protocol is what the client proxy detected: ProtocolOpaque,
	// ProtocolHTTP1 or ProtocolH2, or ProtocolMeshH2 when the client
	// proxy itself speaks HTTP/2 on the connection (HTTP-aware outbound).
	// The server proxy treats http/1 as HTTP (and adds
	// x-forwarded-client-cert), mesh-h2 and h2 as HTTP/2 streams to
	// deliver one by one (h2 always as h2c), and anything else as bytes.
	Protocol Protocol
	// Name is the service the client addressed, when known ("" if not).
	Name string
}

// headerProtocols maps wire codes to protocols.
var headerProtocols = map[byte]Protocol{1: ProtocolOpaque, 2: ProtocolHTTP1, 3: ProtocolH2, 4: ProtocolMeshH2}

func protocolCode(p Protocol) (byte, bool) {
	for code, q := range headerProtocols {
		if q == p {
			return code, true
		}
	}
	return 0, false
}

// headerProtocol maps a detected protocol to what the header carries:
// HTTP/1 and HTTP/2 as such, everything else (TLS, unknown, nothing) as
// opaque.
func headerProtocol(p Protocol) Protocol {
	switch p {
	case ProtocolHTTP1, ProtocolH2, ProtocolMeshH2:
		return p
	}
	return ProtocolOpaque
}

// validate checks h's fields.
func (h Header) validate() error {
	if h.Port == 0 {
		return fmt.Errorf("%w: target port 0", ErrHeaderInvalid)
	}
	if _, ok := protocolCode(h.Protocol); !ok {
		return fmt.Errorf("%w: protocol %q (want opaque, http/1, h2 or mesh-h2)", ErrHeaderInvalid, h.Protocol)
	}
	if len(h.Name) > MaxServiceNameLen {
		return fmt.Errorf("%w: service name is %d bytes, more than %d", ErrHeaderInvalid, len(h.Name), MaxServiceNameLen)
	}
	for i := 0; i < len(h.Name); i++ {
		if c := h.Name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: service name has byte %#x at %d (printable ASCII only)", ErrHeaderInvalid, c, i)
		}
	}
	return nil
}

// EncodeHeader returns the wire form of h, or an error when a field is
// out of range.
func EncodeHeader(h Header) ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("encoding transport header: %w", err)
	}
	code, _ := protocolCode(h.Protocol)
	body := headerFixedBody + len(h.Name)
	b := make([]byte, 0, headerPrefixLen+body)
	b = append(b, headerMagic0, headerMagic1, HeaderVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(body))
	b = binary.BigEndian.AppendUint16(b, h.Port)
	b = append(b, code, byte(len(h.Name)))
	b = append(b, h.Name...)
	return b, nil
}

// DecodeHeader reads exactly one transport header from r, never more, so
// the stream that follows is left unread. Errors wrap ErrHeaderTruncated,
// ErrHeaderTooLarge, ErrHeaderMagic, ErrHeaderVersion or ErrHeaderInvalid
// (or the read error). Callers reading from a network connection must
// set a read deadline first: a peer that sends half a header would
// otherwise hold the reader forever.
func DecodeHeader(r io.Reader) (Header, error) {
	var pre [headerPrefixLen]byte
	if err := readFull(r, pre[:]); err != nil {
		return Header{}, fmt.Errorf("reading transport header: %w", err)
	}
	if pre[0] != headerMagic0 || pre[1] != headerMagic1 {
		return Header{}, fmt.Errorf("reading transport header: %w: starts %#x %#x", ErrHeaderMagic, pre[0], pre[1])
	}
	if pre[2] != HeaderVersion {
		return Header{}, fmt.Errorf("reading transport header: %w: %d (this proxy speaks %d)", ErrHeaderVersion, pre[2], HeaderVersion)
	}
	n := int(binary.BigEndian.Uint16(pre[3:]))
	if n > MaxHeaderSize-headerPrefixLen {
		return Header{}, fmt.Errorf("reading transport header: %w: body of %d bytes (max %d)", ErrHeaderTooLarge, n, MaxHeaderSize-headerPrefixLen)
	}
	if n < headerFixedBody {
		return Header{}, fmt.Errorf("reading transport header: %w: body of %d bytes, less than the %d fixed ones", ErrHeaderInvalid, n, headerFixedBody)
	}
	body := make([]byte, n)
	if err := readFull(r, body); err != nil {
		return Header{}, fmt.Errorf("reading transport header body: %w", err)
	}
	proto, ok := headerProtocols[body[2]]
	if !ok {
		return Header{}, fmt.Errorf("reading transport header: %w: protocol code %d", ErrHeaderInvalid, body[2])
	}
	if nameLen := int(body[3]); headerFixedBody+nameLen != n {
		return Header{}, fmt.Errorf("reading transport header: %w: name length %d does not fill a body of %d bytes", ErrHeaderInvalid, nameLen, n)
	}
	h := Header{Port: binary.BigEndian.Uint16(body), Protocol: proto, Name: string(body[headerFixedBody:])}
	if err := h.validate(); err != nil {
		return Header{}, fmt.Errorf("reading transport header: %w", err)
	}
	return h, nil
}

// readFull is io.ReadFull that reports a short stream as
// ErrHeaderTruncated.
func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrHeaderTruncated, err)
	}
	return err
}
