// Package promutil holds small helpers around client_golang.
package promutil
