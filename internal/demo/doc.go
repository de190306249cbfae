// Package demo generates a synthetic multi-service trace workload and sends it over OTLP/gRPC.
package demo
