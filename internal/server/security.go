package server

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

// healthService is the standard gRPC health service, open to every caller
// so that probes need no token.
const healthService = "grpc.health.v1.Health"

// newAuthenticator returns the node's authenticator, or nil with
// authentication off: then no middleware or interceptor is installed, and
// every endpoint behaves, and counts its refusals, as it always has.
func newAuthenticator(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*auth.Authenticator, error) {
	if !cfg.Auth.Enabled {
		return nil, nil
	}
	opts := auth.DefaultOptions()
	opts.Enabled = true
	opts.Resolver = tenant.Resolver{Enabled: cfg.MultitenancyEnabled}
	if cfg.Auth.AdminTokenFile != "" {
		hashes, err := auth.LoadAdminTokens(cfg.Auth.AdminTokenFile)
		if err != nil {
			return nil, fmt.Errorf("auth.admin-token-file: %w", err)
		}
		opts.AdminTokens = hashes
	}
	return auth.New(opts, cfg.Tokens, reg, logger)
}

// newServerTLS returns the TLS configuration of the public listeners, or
// nil with TLS off. The three listeners take copies of it, which share
// one certificate reloader.
func newServerTLS(c TLSConfig) (*tls.Config, error) {
	if !c.Enabled() {
		return nil, nil
	}
	return auth.ServerConfig(c.CertFile, c.KeyFile, c.ClientCAFile, c.RequireClientCert)
}

// grpcServerOptions are the options of the :4317 server: the receiver's,
// then TLS and authentication when on. The authentication interceptors come
// after the receiver's per-method metrics, so refused calls are counted per
// method too.
func (s *Server) grpcServerOptions() []grpc.ServerOption {
	opts := s.recv.GRPCServerOptions()
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	if s.auth != nil {
		// Every method needs a tenant: the OTLP TraceService, the streaming
		// ingest service and the writer service all serve a tenant's data.
		access := auth.OpenServices(healthService)
		opts = append(opts,
			grpc.ChainUnaryInterceptor(s.auth.UnaryServerInterceptor(access)),
			grpc.ChainStreamInterceptor(s.auth.StreamServerInterceptor(access)))
	}
	return opts
}

// tenantOnly serves h only to requests with a tenant's token when
// authentication is on; off, h is served as it is.
func (s *Server) tenantOnly(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.RequireTenant(h)
}

// adminOnly serves h only to requests with an admin token when
// authentication is on; off, h is served as it is.
func (s *Server) adminOnly(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.RequireAdmin(h)
}

// adminChange serves h, an API that changes the cluster's metadata or the
// node's configuration (tenants, their tokens and limits, members,
// reload), to requests with an admin token when authentication is on. With
// it off nothing tells an operator from anyone who reaches the web port,
// so h answers requests from this host (a loopback peer) only; the others
// get 403, counted, with what to do.
func (s *Server) adminChange(h http.Handler) http.Handler {
	if s.auth != nil {
		return s.auth.RequireAdmin(h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil && IsLoopbackHost(host) {
			h.ServeHTTP(w, r)
			return
		}
		s.adminRemoteRefused.Inc()
		writeAPIError(w, http.StatusForbidden, "forbidden",
			"the admin API changes tenants, tokens, limits and cluster members: without --auth.enabled it answers requests from this host (loopback) only. "+
				"Call it on the node itself, or turn on --auth.enabled with --auth.admin-token-file and send an admin token")
	})
}

// reloadAdminTokens reads the admin token file again, keeping the tokens
// in service if it cannot be read. Nothing to do without authentication or
// without the file.
func (s *Server) reloadAdminTokens() error {
	if s.auth == nil || s.cfg.Auth.AdminTokenFile == "" {
		return nil
	}
	hashes, err := auth.LoadAdminTokens(s.cfg.Auth.AdminTokenFile)
	if err != nil {
		return fmt.Errorf("the admin tokens in service are kept: %w", err)
	}
	s.auth.SetAdminTokens(hashes)
	return nil
}

// statusHandler serves Prometheus's /api/v1/status/config or
// /api/v1/status/flags answer, data, to admins with authentication on. The
// query API serves them with authentication off, but it resolves a tenant
// first, and an admin token has none.
func statusHandler(data func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b, err := json.Marshal(struct {
			Status string `json:"status"`
			Data   any    `json:"data"`
		}{"success", data()})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(b, '\n'))
	})
}
