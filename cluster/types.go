package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hopwatch/hopwatch/internal/auth"
)

// Tenant is one tenant's replicated metadata.
type Tenant struct {
	// ID is the tenant ID, with the rules of internal/tenant (Mimir's).
	ID string `json:"id"`
	// Limits override the server's default limits for this tenant.
	Limits Limits `json:"limits"`
	// Settings are per-tenant settings by name (a flag's name without the
	// leading dashes, such as "ruler.evaluation-interval"), for what has no
	// field in Limits yet.
	Settings map[string]string `json:"settings,omitempty"`
	// TokenHashes are the SHA-256 hashes of the tenant's API tokens. A
	// token itself is never stored: auth.NewToken makes one, and only
	// HashToken(token) goes here.
	TokenHashes []TokenHash `json:"token_hashes,omitempty"`
	// Version is the raft index of the tenant's last change. In PutTenant
	// a non-zero Version is a precondition: the change applies only if the
	// tenant is still at that version (optimistic concurrency).
	Version uint64 `json:"version,omitempty"`
	// Created and Updated are the leader's clock when the change was
	// appended to the log. PutTenant ignores them.
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
}

// Limits are a tenant's overrides of the server's default limits (the
// --limits.* flags of the same names). A zero field is not overridden: the
// default applies. New limits are new fields: an old command without them
// decodes with them zero, which keeps its meaning.
type Limits struct {
	// IngestionRateSpans is the global rate in spans per second
	// (--limits.ingestion-rate-spans).
	IngestionRateSpans float64 `json:"ingestion_rate_spans,omitempty"`
	// IngestionBurstSpans is the bucket size in spans
	// (--limits.ingestion-burst-spans).
	IngestionBurstSpans int64 `json:"ingestion_burst_spans,omitempty"`
	// IngestionRateBytes is the global rate in bytes per second
	// (--limits.ingestion-rate-bytes).
	IngestionRateBytes float64 `json:"ingestion_rate_bytes,omitempty"`
	// MaxSeriesPerTenant caps the tenant's active series
	// (--limits.max-series-per-tenant).
	MaxSeriesPerTenant int64 `json:"max_series_per_tenant,omitempty"`
}

// TokenHash is the SHA-256 hash of an API token, the same hash as
// auth.HashToken's (the two convert into each other). It encodes as 64
// lower-case hex digits.
type TokenHash [sha256.Size]byte

// HashToken returns the hash under which a token is stored: auth.HashToken,
// so that the cluster and the authenticator agree on it. Tokens themselves
// come from auth.NewToken.
func HashToken(token string) TokenHash { return auth.HashToken(token) }

func (h TokenHash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText encodes the hash as hex.
func (h TokenHash) MarshalText() ([]byte, error) {
	return hex.AppendEncode(nil, h[:]), nil
}

// UnmarshalText decodes 64 hex digits.
func (h *TokenHash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("a token hash is %d hex digits (SHA-256), not %d", 2*len(h), len(b))
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		return fmt.Errorf("a token hash is hex: %v", err)
	}
	return nil
}

// RuleGroup is one Prometheus rule group of a tenant, as YAML (one group,
// the body of Mimir's rules config API). The cluster checks its shape, not
// its rules: the caller parses it before PutRuleGroup.
type RuleGroup struct {
	Tenant    string `json:"tenant"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	YAML      string `json:"yaml"`
	// Version is the raft index of the group's last change.
	Version uint64    `json:"version,omitempty"`
	Updated time.Time `json:"updated,omitzero"`
}

// Exclusion takes one writer out of its tenant's watermark until it is
// included again.
type Exclusion struct {
	Tenant string `json:"tenant"`
	Writer string `json:"writer"`
	// Reason is free text for the operator, optional.
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

// MemberState is a member's liveness as the leader sees it, replicated so
// that every node routes over the same ring.
type MemberState string

// The states of a member.
const (
	// MemberLive: the leader reaches the member.
	MemberLive MemberState = "live"
	// MemberUnreachable: the leader has not reached the member for
	// Config.UnreachableAfter.
	MemberUnreachable MemberState = "unreachable"
)

// Member is one node of the cluster: an entry of raft's configuration with
// what raft does not know about it.
type Member struct {
	ID string `json:"id"`
	// RaftAddr is the raft transport's address (port 9801).
	RaftAddr string `json:"raft_addr"`
	// GRPCAddr is the cluster gRPC service's address (port 9802); empty
	// until the node has registered it.
	GRPCAddr string `json:"grpc_addr,omitempty"`
	// Voter is false for a raft non-voter.
	Voter bool `json:"voter"`
	// State and Since: the replicated liveness, and when it last changed
	// (the leader's clock).
	State MemberState `json:"state"`
	Since time.Time   `json:"since,omitzero"`
}
