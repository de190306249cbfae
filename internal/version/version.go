package version

import (
	"runtime/debug"
	"sync"
)

// Version is the release, set at build time with
// -ldflags "-X github.com/hopwatch/hopwatch/internal/version.Version=v1.2.3".
var Version = "0.1.0-dev"

// Info describes the build.
type Info struct {
	Version, Revision, Branch, BuildDate, GoVersion string
}

// Get reads the build information the Go toolchain embedded in the binary.
var Get = sync.OnceValue(func() Info {
	info := Info{Version: Version, Branch: "main"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		info.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.BuildDate = s.Value
			}
		}
	}
	return info
})
