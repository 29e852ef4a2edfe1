package identity

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRenewalWithoutTokenFile: once a proxy holds a valid certificate it
// renews with it; a join token file removed after joining (a spent
// bootstrap secret) must not stop the renewal.
func TestRenewalWithoutTokenFile(t *testing.T) {
	ca := mustCA(t, "")
	_, addr := startService(t, ca, nil)
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client := &Client{Addr: addr, Anchors: ca.Anchors(), TokenFile: tokFile}
	cert, err := Obtain(t.Context(), client, web, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tokFile); err != nil {
		t.Fatal(err)
	}
	renewed, err := Obtain(t.Context(), client, web, time.Hour, cert)
	if err != nil {
		t.Fatalf("renewal with a valid certificate after the token file was removed: %v", err)
	}
	if renewed.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Error("renewal returned the old certificate")
	}
	// Without a certificate the missing file is still the reported problem.
	if _, err := Obtain(t.Context(), client, web, time.Hour, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("join without token file: err = %v; want the file's not-exist error", err)
	}
}
