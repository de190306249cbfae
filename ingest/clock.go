package ingest

// Clock offsets between nodes, estimated from paired client/server spans
// as NTP does: with t1, t4 the client span's start and end (client clock)
// and t2, t3 the server span's (server clock),
//
//	offset = ((t2-t1) + (t3-t4)) / 2   server clock minus client clock
//	delay  = (t4-t1) - (t3-t2)         network round trip
//
// The offset of one exchange errs by half the asymmetry of its two network
// legs, at most half its delay; so, as NTP's clock filter does, the
// estimate is the offset of the exchange with the smallest delay among the
// last clockWindow.

// clockWindow is how many recent exchanges per node pair the filter keeps.
const clockWindow = 64

type nodePair struct {
	tenant, client, server string
}

// clockRing keeps the last clockWindow exchanges of one node pair.
type clockRing struct {
	offsets, delays [clockWindow]int64
	n, next         int
}

// add records an exchange and returns the current estimate.
func (r *clockRing) add(offset, delay int64) int64 {
	r.offsets[r.next], r.delays[r.next] = offset, delay
	r.next = (r.next + 1) % clockWindow
	r.n = min(r.n+1, clockWindow)
	return r.best()
}

func (r *clockRing) best() int64 {
	bi := 0
	for i := 1; i < r.n; i++ {
		if r.delays[i] < r.delays[bi] {
			bi = i
		}
	}
	return r.offsets[bi]
}

// exchange returns the NTP offset and delay of a paired request.
func exchange(t1, t2, t3, t4 int64) (offset, delay int64) {
	return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)
}
