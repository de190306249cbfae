package raw

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/internal/promutil"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/sample"
)

// Store is the raw tier of every tenant: one DB per tenant under
// <Dir>/<tenant>, opened on first write.
type Store struct {
	opts   Options // Dir is the parent of the tenants' directories
	reg    prometheus.Registerer
	logger *slog.Logger

	mtx     sync.RWMutex
	tenants map[string]*DB
	regs    map[string]*promutil.TrackingRegisterer
	closed  bool
}

// errStoreClosed is returned by operations on a closed store.
var errStoreClosed = errors.New("hopwatch/raw: store closed")

// OpenStore opens every tenant DB under opts.Dir.
func OpenStore(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*Store, error) {
	probe := opts
	probe.Dir = filepath.Join(opts.Dir, "probe")
	if err := probe.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/raw: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Store{opts: opts, reg: reg, logger: logger, tenants: map[string]*DB{}, regs: map[string]*promutil.TrackingRegisterer{}}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || tenant.Validate(e.Name()) != nil {
			continue
		}
		if _, err := s.open(e.Name()); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// open opens a tenant's DB; the caller holds s.mtx or is OpenStore.
func (s *Store) open(id string) (*DB, error) {
	o := s.opts
	o.Dir = filepath.Join(s.opts.Dir, id)
	// Per-tenant metrics go when the tenant goes, so that it can come back.
	treg := promutil.NewTrackingRegisterer(prometheus.WrapRegistererWith(prometheus.Labels{"tenant": id}, s.reg))
	db, err := Open(o, treg, s.logger.With("tenant", id))
	if err != nil {
		treg.UnregisterAll()
		return nil, fmt.Errorf("hopwatch/raw: tenant %s: %w", id, err)
	}
	s.tenants[id] = db
	s.regs[id] = treg
	return db, nil
}

// DB returns a tenant's DB, or nil when the tenant has no raw data.
func (s *Store) DB(id string) *DB {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	return s.tenants[id]
}

// Tenants returns the tenants with raw data, sorted.
func (s *Store) Tenants() []string {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	ids := make([]string, 0, len(s.tenants))
	for id := range s.tenants {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (s *Store) tenantDB(id string) (*DB, error) {
	s.mtx.RLock()
	db, closed := s.tenants[id], s.closed
	s.mtx.RUnlock()
	if closed {
		return nil, errStoreClosed
	}
	if db != nil {
		return db, nil
	}
	if err := tenant.Validate(id); err != nil {
		return nil, err
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	if s.closed {
		return nil, errStoreClosed
	}
	if db := s.tenants[id]; db != nil {
		return db, nil
	}
	return s.open(id)
}

// Append appends a batch to a tenant's DB; see DB.Append.
func (s *Store) Append(id string, b *sample.Batch) (tooOld int, err error) {
	db, err := s.tenantDB(id)
	if err != nil {
		return 0, err
	}
	return db.Append(b)
}

// AppendSampled appends a batch to a tenant's DB at a sampling level; see
// DB.AppendSampled.
func (s *Store) AppendSampled(id string, b *sample.Batch, level int) (tooOld, sampledOut int, err error) {
	db, err := s.tenantDB(id)
	if err != nil {
		return 0, 0, err
	}
	return db.AppendSampled(b, level)
}

// Compact compacts every tenant's DB at wall-clock time now; see
// DB.Compact. A tenant whose compaction fails does not hold up the others.
func (s *Store) Compact(now time.Time) error {
	var errs []error
	for _, db := range s.snapshot() {
		if err := db.Compact(now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Store) snapshot() []*DB {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	ids := make([]string, 0, len(s.tenants))
	for id := range s.tenants {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*DB, len(ids))
	for i, id := range ids {
		out[i] = s.tenants[id]
	}
	return out
}

// DeleteTenant closes a tenant's DB and deletes all its raw data.
func (s *Store) DeleteTenant(id string) error {
	if err := tenant.Validate(id); err != nil {
		return err
	}
	s.mtx.Lock()
	db, treg := s.tenants[id], s.regs[id]
	delete(s.tenants, id)
	delete(s.regs, id)
	s.mtx.Unlock()
	if treg != nil {
		treg.UnregisterAll()
	}
	if db != nil {
		if err := db.discard(); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(filepath.Join(s.opts.Dir, id)); err != nil {
		return fmt.Errorf("hopwatch/raw: delete tenant %s: %w", id, err)
	}
	s.logger.Info("raw data of tenant deleted", "tenant", id)
	return nil
}

// Close closes every tenant's DB.
func (s *Store) Close() error {
	s.mtx.Lock()
	s.closed = true
	dbs := s.tenants
	s.tenants = map[string]*DB{}
	s.mtx.Unlock()
	var errs []error
	for _, db := range dbs {
		errs = append(errs, db.Close())
	}
	return errors.Join(errs...)
}
