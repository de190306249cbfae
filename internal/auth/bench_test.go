package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// The cost authentication adds to each request (an OTLP export, a query):
//
//	go test -run '^$' -bench . -benchmem ./internal/auth/

func benchAuth(b *testing.B) *Authenticator {
	b.Helper()
	tokens := TokenMap{}
	for i := range 10000 {
		tok, err := NewToken(nil)
		if err != nil {
			b.Fatal(err)
		}
		tokens[HashToken(tok)] = "tenant-" + string(rune('a'+i%26))
	}
	tokens[HashToken(tokenA)] = "team-a"
	a, err := New(Options{Enabled: true, Realm: "hopwatch", AdminTokens: [][32]byte{HashToken(tokenAdmin), HashToken(tokenB)}},
		tokens, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func BenchmarkFromHTTP(b *testing.B) {
	a := benchAuth(b)
	r := httptest.NewRequest(http.MethodPost, "/v1/traces", nil)
	r.Header.Set("Authorization", "Bearer "+tokenA)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.FromHTTP(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRequireTenant(b *testing.B) {
	a := benchAuth(b)
	h := a.RequireTenant(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest(http.MethodPost, "/v1/traces", nil)
	r.Header.Set("Authorization", "Bearer "+tokenA)
	r.Header.Set("Content-Type", "application/x-protobuf")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}

func BenchmarkUnaryInterceptor(b *testing.B) {
	a := benchAuth(b)
	icpt := a.UnaryServerInterceptor(nil)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
		"authorization", "Bearer "+tokenA, "content-type", "application/grpc", "user-agent", "OTel-OTLP-Exporter-Go/1.47.0"))
	info := &grpc.UnaryServerInfo{FullMethod: "/opentelemetry.proto.collector.trace.v1.TraceService/Export"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := icpt(ctx, nil, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
