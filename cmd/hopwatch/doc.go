// Command hopwatch runs the hopwatch latency observability backend.
//
//	hopwatch [serve] [flags]   run a node (the default)
//	hopwatch demo [flags]      run a node with a synthetic workload
//	hopwatch bench storage     measure the raw tier's codecs
//	hopwatch --version         print the version
package main
