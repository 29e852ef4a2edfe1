package identity

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTokens(t *testing.T) {
	ca, other := mustCA(t, ""), mustCA(t, "")
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/default/sa/db")
	auth := ca.TokenAuthenticator()
	tok, err := ca.IssueToken(web, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := TokenIdentity(tok); err != nil || got != web {
		t.Errorf("TokenIdentity = %v, %v; want %v", got, err, web)
	}
	if tok2, _ := ca.IssueToken(web, time.Hour); tok2 == tok {
		t.Error("two tokens for the same identity are equal; want a random id in each")
	}

	// Swap the claims for ones naming db, keeping the signature.
	parts := strings.Split(tok, ".")
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forged := strings.Replace(string(claims), "/sa/web", "/sa/db", 1)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(forged)) + "." + parts[2]

	otherTok, _ := other.IssueToken(web, time.Hour)
	expired, _ := ca.IssueToken(web, time.Hour)
	future := &TokenAuthenticator{Key: auth.Key, now: func() time.Time { return time.Now().Add(2 * time.Hour) }}

	tests := []struct {
		name  string
		auth  *TokenAuthenticator
		token string
		want  ID
		err   error
	}{
		{"good", auth, tok, web, nil},
		{"good with newline", auth, tok + "\n", web, nil},
		{"other identity", auth, tok, db, ErrTokenIdentity},
		{"tampered", auth, tampered, db, ErrTokenSignature},
		{"other CA", auth, otherTok, web, ErrTokenSignature},
		{"expired", future, expired, web, ErrTokenExpired},
		{"garbage", auth, "hello", web, ErrTokenMalformed},
		{"empty", auth, "", web, ErrTokenMalformed},
		{"bad signature encoding", auth, parts[0] + "." + parts[1] + ".!!", web, ErrTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.auth.Authenticate(t.Context(), tt.token, tt.want)
			if tt.err == nil {
				if err != nil {
					t.Fatalf("Authenticate = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("Authenticate = %v; want %v", err, tt.err)
			}
			t.Logf("refused: %v", err)
		})
	}
}
