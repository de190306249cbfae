package auth

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"google.golang.org/grpc/metadata"
)

// TokenPrefix starts every token NewToken makes, so that people and secret
// scanners can tell a hopwatch token from other credentials.
const TokenPrefix = "hw_"

// tokenBytes is the randomness in a token. 256 bits make guessing hopeless,
// which is what lets a plain SHA-256 stand in for a slow password hash: a
// hash per request must cost nanoseconds, not the ~50 ms of bcrypt.
const tokenBytes = 32

// TokenLength is the length of a token from NewToken.
const TokenLength = len(TokenPrefix) + (tokenBytes*8+5)/6

// maxTokenLength bounds a bearer token read from a request. Tokens from
// NewToken are TokenLength bytes; the slack admits tokens made elsewhere.
const maxTokenLength = 512

// minPlainAdminToken is the shortest admin token accepted in clear in an
// admin token file: shorter ones could be guessed (24 bytes of base64 are
// 144 bits).
const minPlainAdminToken = 24

// hashPrefix starts a token hash written as text.
const hashPrefix = "sha256:"

// NewToken returns a new token: TokenPrefix followed by 32 bytes from random
// in unpadded base64url. A nil random reads crypto/rand.
func NewToken(random io.Reader) (string, error) {
	if random == nil {
		random = rand.Reader
	}
	var b [tokenBytes]byte
	if _, err := io.ReadFull(random, b[:]); err != nil {
		return "", fmt.Errorf("hopwatch/auth: reading %d random bytes for a token: %w", tokenBytes, err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// HashToken returns the hash under which a token is stored.
func HashToken(token string) [32]byte {
	return sha256.Sum256([]byte(token))
}

// FormatHash writes a token hash as text: "sha256:" and 64 hex digits, the
// form admin token files and the tenant API take.
func FormatHash(h [32]byte) string {
	return hashPrefix + hex.EncodeToString(h[:])
}

// ParseHash reads a hash written by FormatHash.
func ParseHash(s string) ([32]byte, error) {
	h, err := parseHash(s)
	if err != nil {
		return h, fmt.Errorf("hopwatch/auth: %w", err)
	}
	return h, nil
}

func parseHash(s string) ([32]byte, error) {
	var h [32]byte
	hexPart, ok := strings.CutPrefix(s, hashPrefix)
	if !ok {
		return h, fmt.Errorf("a token hash starts with %q", hashPrefix)
	}
	if len(hexPart) != 2*len(h) {
		return h, fmt.Errorf("a token hash has %d hex digits after %q, got %d", 2*len(h), hashPrefix, len(hexPart))
	}
	if _, err := hex.Decode(h[:], []byte(hexPart)); err != nil {
		return h, fmt.Errorf("a token hash is hex after %q: %w", hashPrefix, err)
	}
	return h, nil
}

// Tokens finds the tenant a token belongs to. The tenant metadata store
// (replicated with raft) implements it; it holds hashes only.
//
// Lookup is called on every authenticated request, concurrently: it must
// not block on the network, and the tenant it returns must be a valid
// tenant ID (tenant.Validate).
type Tokens interface {
	Lookup(hash [32]byte) (tenant string, ok bool)
}

// TokenMap is a Tokens held in memory, from token hash to tenant, for tests
// and for single-node setups that load tokens from a file. It must not be
// changed while in use.
type TokenMap map[[32]byte]string

var _ Tokens = TokenMap(nil)

// Lookup implements Tokens. A map look-up by hash leaks, through timing,
// at most how a guess's hash compares with the stored hashes, which says
// nothing usable about any token without a SHA-256 preimage.
func (m TokenMap) Lookup(hash [32]byte) (string, bool) {
	t, ok := m[hash]
	return t, ok
}

// AuthorizationHeader is the HTTP header carrying the bearer token; as gRPC
// metadata it is "authorization".
const AuthorizationHeader = "Authorization"

// Metadata keys as gRPC stores them: lower case.
const (
	authorizationMetadata = "authorization"
	orgIDMetadata         = "x-scope-orgid"
)

// BearerFromHeader returns the token of an Authorization: Bearer header.
// The error is an *Error with ReasonMissing or ReasonMalformed, uncounted.
func BearerFromHeader(h http.Header) (string, error) {
	return bearer(h.Values(AuthorizationHeader))
}

// BearerFromMetadata returns the token of gRPC authorization metadata, as
// BearerFromHeader.
func BearerFromMetadata(md metadata.MD) (string, error) {
	return bearer(md.Get(authorizationMetadata))
}

func bearer(vals []string) (string, error) {
	switch len(vals) {
	case 0:
		return "", &Error{Reason: ReasonMissing, msg: "no bearer token: send the header " + AuthorizationHeader + ": Bearer <token> with a token of your tenant"}
	case 1:
		return parseBearer(vals[0])
	}
	return "", &Error{Reason: ReasonMalformed, msg: fmt.Sprintf("%d %s headers; send exactly one: Bearer <token>", len(vals), AuthorizationHeader)}
}

// parseBearer reads "Bearer <token>" (RFC 6750 section 2.1; the scheme is
// case-insensitive). Messages never repeat what was sent: it may be a
// secret put in the wrong place.
func parseBearer(v string) (string, error) {
	malformed := func(format string, args ...any) error {
		return &Error{Reason: ReasonMalformed, msg: fmt.Sprintf(format, args...)}
	}
	scheme, tok, ok := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		if ok && isSchemeName(scheme) {
			return "", malformed("the %s header uses the %s scheme; hopwatch takes %s: Bearer <token>", AuthorizationHeader, scheme, AuthorizationHeader)
		}
		return "", malformed("the %s header is not Bearer <token>: put \"Bearer \" before the token", AuthorizationHeader)
	}
	tok = strings.TrimLeft(tok, " ")
	if tok == "" {
		return "", malformed("the %s header has the Bearer scheme but no token after it", AuthorizationHeader)
	}
	if len(tok) > maxTokenLength {
		return "", malformed("the bearer token is %d bytes, longer than the limit of %d (hopwatch's tokens are %d)", len(tok), maxTokenLength, TokenLength)
	}
	if i := invalidTokenByte(tok); i >= 0 {
		return "", malformed("the bearer token has a byte at offset %d that no token has (tokens are letters, digits and -._~+/, then = padding)", i)
	}
	return tok, nil
}

// isSchemeName reports whether s looks like an authentication scheme name
// (Basic, Digest, ...) rather than a credential, and can be quoted back.
func isSchemeName(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// invalidTokenByte returns the offset of the first byte outside RFC 6750's
// b64token syntax, or -1.
func invalidTokenByte(tok string) int {
	pad := false
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '=' {
			pad = true
			continue
		}
		if pad {
			return i
		}
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		switch c {
		case '-', '.', '_', '~', '+', '/':
			continue
		}
		return i
	}
	return -1
}

// LoadAdminTokens reads the admin tokens of path (--auth.admin-token-file):
// one a line, either a hash as FormatHash writes it (preferred: the file
// then holds no secret) or a token, hashed at once so that only hashes stay
// in memory. Blank lines and lines starting with # are skipped. Errors name
// the file and line but never repeat a line: it may be a token.
func LoadAdminTokens(path string) ([][32]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/auth: reading the admin token file: %w", err)
	}
	var (
		hashes [][32]byte
		errs   []error
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, hashPrefix):
			h, err := parseHash(line)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s line %d: %w", path, n, err))
				continue
			}
			hashes = append(hashes, h)
		default:
			if i := invalidTokenByte(line); i >= 0 {
				errs = append(errs, fmt.Errorf("%s line %d: neither a hash (%s<64 hex digits>) nor a token: byte at offset %d cannot be in a token", path, n, hashPrefix, i))
				continue
			}
			if len(line) < minPlainAdminToken {
				errs = append(errs, fmt.Errorf("%s line %d: a token of %d bytes is too short to resist guessing; use at least %d (hopwatch's tokens have %d)", path, n, len(line), minPlainAdminToken, TokenLength))
				continue
			}
			hashes = append(hashes, HashToken(line))
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("hopwatch/auth: invalid admin token file: %w", errors.Join(errs...))
	}
	if len(hashes) == 0 {
		return nil, fmt.Errorf("hopwatch/auth: the admin token file %s holds no token or hash; leave --auth.admin-token-file unset to have no admin token", path)
	}
	return hashes, nil
}
