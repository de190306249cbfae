package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The kinds of error a write or a membership change can end with. Every
// error the package returns for a refused change wraps exactly one of them,
// so that an API edge maps it with errors.Is: ErrInvalid to 400, ErrNotFound
// to 404, ErrConflict to 409, ErrNoLeader and ErrShutdown to 503.
var (
	// ErrInvalid: the change is malformed or breaks a rule; the message
	// names the field and what to change. Validation errors are also
	// *ValidationError.
	ErrInvalid = errors.New("hopwatch/cluster: invalid change")
	// ErrNotFound: the change names a tenant, rule group, writer exclusion
	// or member that does not exist.
	ErrNotFound = errors.New("hopwatch/cluster: not found")
	// ErrConflict: the change expected another version of what it modifies,
	// or takes a name (a token, an address) that something else holds. Read
	// the current state and decide again.
	ErrConflict = errors.New("hopwatch/cluster: conflict")
	// ErrNoLeader: no leader could be reached before the apply timeout; the
	// change was not applied, unless the message says its outcome is
	// unknown. Retry later, on any node.
	ErrNoLeader = errors.New("hopwatch/cluster: no reachable leader")
	// ErrUnauthenticated: the node asked refused this node: it does not
	// hold the cluster's secret (--cluster.secret-file) or certificate.
	ErrUnauthenticated = errors.New("hopwatch/cluster: not authenticated")
	// ErrShutdown: this node is shutting down.
	ErrShutdown = errors.New("hopwatch/cluster: node is shut down")
	// ErrUnsupportedVersion: a command or snapshot has a format version
	// this node does not know (written by a newer hopwatch). It wraps
	// ErrInvalid.
	ErrUnsupportedVersion = fmt.Errorf("%w: unsupported format version", ErrInvalid)
)

// errNotLeader is the answer of a node asked to do what only the leader
// does: the asker looks up the leader again and retries. It never leaves the
// package.
var errNotLeader = errors.New("hopwatch/cluster: this node is not the leader")

// ValidationError is one problem with a change: the field and why. It
// matches ErrInvalid with errors.Is. A change with several problems returns
// them all, joined with errors.Join.
type ValidationError struct {
	// Field is the field's name as in the command format, such as
	// "tenant.limits.ingestion_rate_spans".
	Field string
	// Reason says what is wrong and what is accepted.
	Reason string
}

func (e *ValidationError) Error() string {
	return "hopwatch/cluster: invalid " + e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// remoteError is an error the leader returned for a forwarded request: the
// leader's message, matching the same kind as the leader's error did.
type remoteError struct {
	kind error
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// toStatus turns an error of this package into the gRPC status the cluster
// service answers with.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Internal
	switch {
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrConflict):
		code = codes.Aborted
	case errors.Is(err, errNotLeader):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrShutdown):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	}
	return status.Error(code, err.Error())
}

// fromStatus turns the status of a failed cluster service call back into an
// error of this package's kinds.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	var kind error
	switch st.Code() {
	case codes.InvalidArgument:
		kind = ErrInvalid
	case codes.NotFound:
		kind = ErrNotFound
	case codes.Aborted:
		kind = ErrConflict
	case codes.FailedPrecondition:
		kind = errNotLeader
	case codes.Unavailable:
		kind = ErrNoLeader
	case codes.DeadlineExceeded:
		kind = context.DeadlineExceeded
	case codes.Canceled:
		kind = context.Canceled
	case codes.Unauthenticated, codes.PermissionDenied:
		kind = ErrUnauthenticated
	default:
		return fmt.Errorf("hopwatch/cluster: leader: %w", err)
	}
	return &remoteError{kind: kind, msg: st.Message()}
}

// fromRaft maps the errors of hashicorp/raft's futures.
func fromRaft(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrNotVoter),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return errNotLeader
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: leadership was lost before the change committed; its outcome is unknown, read the state before retrying", ErrNoLeader)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: the leader did not accept the change in time", ErrNoLeader)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("hopwatch/cluster: raft: %w", err)
}
