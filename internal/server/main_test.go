package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a node starts must end with Shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
