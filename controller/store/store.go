// Package store is the controller's state store: a small transactional
// key-value interface with an embedded implementation on bbolt (one file, no
// server). A distributed store (etcd) can implement the same interface for a
// highly available controller.
package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNotFound is returned by Tx.Get for a missing key.
var ErrNotFound = errors.New("store: not found")

// Store runs read-only and read-write transactions.
type Store interface {
	// View runs fn in a read-only transaction.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction; the changes are durable
	// when Update returns nil and discarded when fn returns an error. fn
	// may be called more than once (the store may batch concurrent
	// updates and retry), so it must have no side effects outside tx.
	Update(fn func(Tx) error) error
	// Gen changes after every committed Update that wrote to one of the
	// buckets (to any bucket if none is named). What a reader read from
	// them after it saw Gen return g is current for as long as Gen
	// returns g, so it can be kept and served again (read Gen before the
	// View, never after).
	Gen(buckets ...string) uint64
	Close() error
}

// Tx is one transaction. Buckets are created on first Put.
type Tx interface {
	Get(bucket, key string) ([]byte, error)
	Put(bucket, key string, value []byte) error
	Delete(bucket, key string) error
	// ForEach visits the keys of bucket in byte order, from the first key
	// >= start. Returning ErrStop from fn ends the walk without error.
	ForEach(bucket, start string, fn func(key string, value []byte) error) error
	// NextSeq returns the next value of bucket's monotonic sequence.
	NextSeq(bucket string) (uint64, error)
	// Seq returns the last value NextSeq returned for bucket (0: none).
	Seq(bucket string) uint64
}

// ErrStop ends a ForEach walk early.
var ErrStop = errors.New("store: stop")

// Bolt is the embedded store.
type Bolt struct {
	db   *bolt.DB
	gen  atomic.Uint64
	gens sync.Map // bucket -> *atomic.Uint64
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (creating if needed) the store file at path.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store: %s is locked by another process (is a controller already running?)", path)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// Batch coalesces concurrent registrations into one fsync.
	db.MaxBatchDelay = 2 * time.Millisecond
	return &Bolt{db: db}, nil
}

// View implements Store.
func (b *Bolt) View(fn func(Tx) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx, nil}) })
}

// Update implements Store.
func (b *Bolt) Update(fn func(Tx) error) error {
	// The buckets fn wrote to, over every time the batch ran it.
	written := map[string]bool{}
	err := b.db.Batch(func(tx *bolt.Tx) error { return fn(boltTx{tx, written}) })
	if err == nil {
		for bucket := range written {
			g, _ := b.gens.LoadOrStore(bucket, new(atomic.Uint64))
			g.(*atomic.Uint64).Add(1)
		}
		b.gen.Add(1)
	}
	return err
}

// Gen implements Store.
func (b *Bolt) Gen(buckets ...string) uint64 {
	if len(buckets) == 0 {
		return b.gen.Load()
	}
	var sum uint64
	for _, bucket := range buckets {
		if g, ok := b.gens.Load(bucket); ok {
			sum += g.(*atomic.Uint64).Load()
		}
	}
	return sum
}

// Close implements Store.
func (b *Bolt) Close() error { return b.db.Close() }

type boltTx struct {
	tx      *bolt.Tx
	written map[string]bool // nil in a View
}

func (t boltTx) Get(bucket, key string) ([]byte, error) {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil, ErrNotFound
	}
	v := b.Get([]byte(key))
	if v == nil {
		return nil, ErrNotFound
	}
	// bbolt memory is valid only inside the transaction.
	return append([]byte(nil), v...), nil
}

func (t boltTx) Put(bucket, key string, value []byte) error {
	if t.written != nil {
		t.written[bucket] = true
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return err
	}
	return b.Put([]byte(key), value)
}

func (t boltTx) Delete(bucket, key string) error {
	if t.written != nil {
		t.written[bucket] = true
	}
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(key))
}

func (t boltTx) ForEach(bucket, start string, fn func(string, []byte) error) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	c := b.Cursor()
	for k, v := c.Seek([]byte(start)); k != nil; k, v = c.Next() {
		if err := fn(string(k), v); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

func (t boltTx) Seq(bucket string) uint64 {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return 0
	}
	return b.Sequence()
}

func (t boltTx) NextSeq(bucket string) (uint64, error) {
	if t.written != nil {
		t.written[bucket] = true
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return 0, err
	}
	return b.NextSequence()
}
