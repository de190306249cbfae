// Package version describes the running build of hopwatch.
package version
