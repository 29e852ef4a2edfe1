package proxy

import "errors"

// Transport header errors, returned (wrapped) by DecodeHeader and
// EncodeHeader. Callers branch with errors.Is.
var (
	// ErrHeaderTruncated: the stream ended inside the header.
	ErrHeaderTruncated = errors.New("transport header truncated")
	// ErrHeaderTooLarge: the header declares more than MaxHeaderSize bytes.
	ErrHeaderTooLarge = errors.New("transport header too large")
	// ErrHeaderMagic: the stream does not start with the header magic: the
	// peer is not a meshproxy (or not speaking the mesh transport).
	ErrHeaderMagic = errors.New("not a meshproxy transport header (bad magic)")
	// ErrHeaderVersion: a header version this proxy does not speak.
	ErrHeaderVersion = errors.New("unsupported transport header version")
	// ErrHeaderInvalid: a field is out of range (port 0, unknown protocol,
	// bad service name, inconsistent lengths).
	ErrHeaderInvalid = errors.New("invalid transport header")
)
