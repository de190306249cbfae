// Package sample defines the batch of latency samples that ingest hands to
// storage: the one type both sides of that border share.
package sample
