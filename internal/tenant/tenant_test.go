package tenant

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

func TestValidate(t *testing.T) {
	f := func(id string, wantErr string) {
		t.Helper()
		err := Validate(id)
		if wantErr == "" {
			require.NoError(t, err)
			return
		}
		require.ErrorContains(t, err, wantErr)
	}
	f("team-a", "")
	f("a.b_c!*'()", "")
	f("", "no tenant ID")
	f("..", "not allowed")
	f("a/b", "'/' at offset 1")
	f(strings.Repeat("x", MaxLength+1), "longer than the limit")
}

func TestResolver(t *testing.T) {
	req := httptest.NewRequest("GET", "/", nil)
	id, err := Resolver{}.FromHTTP(req)
	require.NoError(t, err)
	require.Equal(t, Anonymous, id)

	_, err = Resolver{Enabled: true}.FromHTTP(req)
	require.ErrorIs(t, err, ErrMissing)
	req.Header.Set(Header, "t1")
	id, err = Resolver{Enabled: true}.FromHTTP(req)
	require.NoError(t, err)
	require.Equal(t, "t1", id)

	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-scope-orgid", "t2"))
	id, err = Resolver{Enabled: true}.FromGRPC(ctx)
	require.NoError(t, err)
	require.Equal(t, "t2", id)
	_, err = Resolver{Enabled: true}.FromGRPC(context.Background())
	require.ErrorIs(t, err, ErrMissing)
}
