// Package bitio writes and reads bit streams, most significant bit first,
// for the raw tier's column codecs.
package bitio
