package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"meshproxy/identity"
)

const k8sTestIssuer = "https://kubernetes.default.svc.cluster.local"

// k8sTestCluster is a stand-in for a cluster's ServiceAccount issuer: a
// real P-256 key, published as a JWKS file like /openid/v1/jwks.
type k8sTestCluster struct {
	key  *ecdsa.PrivateKey
	kid  string
	jwks string // file path
}

func newK8sTestCluster(t *testing.T) *k8sTestCluster {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := key.PublicKey.Bytes() // 0x04 || X || Y
	b := base64.RawURLEncoding.EncodeToString
	c := &k8sTestCluster{key: key, kid: "test-kid", jwks: filepath.Join(t.TempDir(), "jwks.json")}
	doc, _ := json.Marshal(map[string]any{"keys": []map[string]any{{
		"use": "sig", "kty": "EC", "kid": c.kid, "crv": "P-256", "alg": "ES256",
		"x": b(raw[1:33]), "y": b(raw[33:]),
	}}})
	if err := os.WriteFile(c.jwks, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// token returns a projected ServiceAccount token for ns/sa, shaped like
// the kubelet's (audience aud, one hour).
func (c *k8sTestCluster) token(t *testing.T, ns, sa, aud string) string {
	t.Helper()
	now := time.Now()
	enc := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	signed := enc(map[string]any{"alg": "ES256", "kid": c.kid}) + "." + enc(map[string]any{
		"aud": []string{aud}, "iss": k8sTestIssuer,
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(),
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"pod":            map[string]any{"name": sa + "-0", "uid": "8a4d2c4e-1111-4c1e-9e55-0d6f1b2a3c4d"},
			"serviceaccount": map[string]any{"name": sa, "uid": "2f7e9b1a-2222-4b8e-8f01-6a5c4d3b2a19"},
		},
	})
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, c.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestIdentityServeK8sFlags(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: %q", errs)
	}
	c := newK8sTestCluster(t)
	broken := filepath.Join(t.TempDir(), "broken.json")
	os.WriteFile(broken, []byte(`{"keys":[]}`), 0o644)
	base := []string{"identity", "serve", "--dir", dir, "--listen", "127.0.0.1:0"}
	bad := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"jwks without issuer", []string{"--k8s-jwks", c.jwks}, 2, "--k8s-issuer is required with --k8s-jwks"},
		{"issuer without jwks", []string{"--k8s-issuer", k8sTestIssuer}, 2, "--k8s-issuer needs --k8s-jwks"},
		{"audience alone", []string{"--k8s-audience", "mesh"}, 2, "--k8s-audience needs --k8s-jwks"},
		{"empty audience", []string{"--k8s-jwks", c.jwks, "--k8s-issuer", k8sTestIssuer, "--k8s-audience", ""}, 2, "--k8s-audience must not be empty"},
		{"issuer with spaces", []string{"--k8s-jwks", c.jwks, "--k8s-issuer", k8sTestIssuer + " "}, 2, "spaces"},
		{"missing jwks file", []string{"--k8s-jwks", c.jwks + ".missing", "--k8s-issuer", k8sTestIssuer}, 1, "no such file"},
		{"jwks without keys", []string{"--k8s-jwks", broken, "--k8s-issuer", k8sTestIssuer}, 1, "no usable"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := idRunCmd(append(append([]string{}, base...), tt.args...)...)
			if code != tt.code || !strings.Contains(errs, tt.msg) {
				t.Fatalf("exit %d, stderr %q; want %d containing %q", code, errs, tt.code, tt.msg)
			}
			if out != "" || strings.Count(errs, "\n") != 1 {
				t.Errorf("stdout %q, stderr %q; want nothing and one line", out, errs)
			}
		})
	}
}

// TestIdentityServeK8s: "identity serve --k8s-jwks --k8s-issuer" issues a
// certificate to a proxy whose token file holds a ServiceAccount token,
// for that ServiceAccount only, and still honours join tokens.
func TestIdentityServeK8s(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: %q", errs)
	}
	c := newK8sTestCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	exit := make(chan int, 1)
	var out bytes.Buffer
	var errb syncBuffer // the service logs from its own goroutines
	go func() {
		exit <- identityServe(ctx, []string{"--dir", dir, "--listen", "127.0.0.1:0",
			"--k8s-jwks", c.jwks, "--k8s-issuer", k8sTestIssuer}, &out, &errb, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case code := <-exit:
		t.Fatalf("serve exited %d early: %s", code, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("serve not ready in 10s")
	}
	if !strings.Contains(errb.String(), "accepting Kubernetes ServiceAccount tokens") {
		t.Errorf("log does not announce ServiceAccount tokens:\n%s", errb.String())
	}
	defer func() {
		cancel()
		select {
		case code := <-exit:
			if code != 0 {
				t.Errorf("serve exit = %d; want 0", code)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop within 10s of cancel")
		}
	}()

	anchors, err := identity.LoadCertsFile(filepath.Join(dir, identity.AnchorFile))
	if err != nil {
		t.Fatal(err)
	}
	web := identity.MustParseID("spiffe://cluster.local/ns/shop/sa/web")
	db := identity.MustParseID("spiffe://cluster.local/ns/shop/sa/db")
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(c.token(t, "shop", "web", "meshproxy")), 0o600)
	proxy := &identity.Client{Addr: addr, Anchors: anchors, TokenFile: tokFile}
	cert, err := identity.Obtain(context.Background(), proxy, web, 0, nil)
	if err != nil {
		t.Fatalf("ServiceAccount token: %v", err)
	}
	if got, _ := identity.IDFromCert(cert.Leaf); got != web {
		t.Errorf("issued for %v; want %v", got, web)
	}
	var se *identity.ServiceError
	if _, err := identity.Obtain(context.Background(), proxy, db, 0, nil); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Errorf("web's token for db: err = %v; want HTTP 403", err)
	}
	other := &identity.Client{Addr: addr, Anchors: anchors, Token: c.token(t, "shop", "web", "vault")}
	if _, err := identity.Obtain(context.Background(), other, web, 0, nil); !errors.As(err, &se) || se.Status != http.StatusUnauthorized || !strings.Contains(se.Reason, "audience") {
		t.Errorf("token for audience vault: err = %v; want HTTP 401 about the audience", err)
	}

	ca, err := identity.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	join, _ := ca.IssueToken(db, time.Hour)
	if _, err := identity.Obtain(context.Background(), &identity.Client{Addr: addr, Anchors: anchors, Token: join}, db, 0, nil); err != nil {
		t.Errorf("join token with --k8s-jwks set: %v", err)
	}
}

// TestIdentityManifestArgs: the identity Deployment in
// scripts/kubernetes passes flags that "identity serve" really has, in a
// combination it accepts, with the JWKS ConfigMap mounted where
// --k8s-jwks points.
func TestIdentityManifestArgs(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "scripts", "kubernetes", "identity.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var d *appsv1.Deployment
	for _, doc := range splitYAMLDocuments(data) {
		if x, ok := strictDecode(t, doc).(*appsv1.Deployment); ok {
			d = x
		}
	}
	if d == nil {
		t.Fatal("no Deployment in identity.yaml")
	}
	spec := d.Spec.Template.Spec
	args := slices.Clone(spec.Containers[0].Args)
	if len(args) < 2 || args[0] != "identity" || args[1] != "serve" {
		t.Fatalf("args = %q; want identity serve ...", args)
	}
	flagValue := func(name string) (int, string) {
		i := slices.Index(args, "--"+name)
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("args %q have no --%s VALUE", args, name)
		}
		return i + 1, args[i+1]
	}
	_, jwksPath := flagValue("k8s-jwks")
	if _, iss := flagValue("k8s-issuer"); iss != k8sTestIssuer {
		t.Errorf("--k8s-issuer = %q; want the kubeadm default %q", iss, k8sTestIssuer)
	}
	if _, aud := flagValue("k8s-audience"); aud != "meshproxy" {
		t.Errorf("--k8s-audience = %q; want meshproxy, the audience inject projects", aud)
	}
	// The ConfigMap meshproxy-k8s-jwks is mounted as a directory holding
	// jwks.json, where --k8s-jwks points.
	mounted := false
	for _, v := range spec.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != "meshproxy-k8s-jwks" {
			continue
		}
		for _, m := range spec.Containers[0].VolumeMounts {
			if m.Name == v.Name && m.SubPath == "" && filepath.Join(m.MountPath, "jwks.json") == jwksPath &&
				(len(v.ConfigMap.Items) == 0 || v.ConfigMap.Items[0].Key == "jwks.json" && v.ConfigMap.Items[0].Path == "jwks.json") {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("ConfigMap meshproxy-k8s-jwks (key jwks.json) is not mounted as a directory at %s", filepath.Dir(jwksPath))
	}

	// Run the same arguments with local paths.
	dir := t.TempDir()
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: %q", errs)
	}
	c := newK8sTestCluster(t)
	i, _ := flagValue("dir")
	args[i] = dir
	i, _ = flagValue("listen")
	args[i] = "127.0.0.1:0"
	i, _ = flagValue("k8s-jwks")
	args[i] = c.jwks
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	exit := make(chan int, 1)
	var errb syncBuffer
	go func() { exit <- identityServe(ctx, args[2:], io.Discard, &errb, ready) }()
	select {
	case <-ready:
	case code := <-exit:
		t.Fatalf("identity serve with the manifest's flags exited %d: %s", code, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("serve not ready in 10s")
	}
	cancel()
	if code := <-exit; code != 0 {
		t.Errorf("exit = %d; want 0", code)
	}
}
