package store

import (
	"errors"
	"path/filepath"
	"testing"
)

// TestGen: an Update changes the generation of the buckets it wrote and
// the store's, a failed one and a View change nothing.
func TestGen(t *testing.T) {
	st, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, b, all := st.Gen("a"), st.Gen("b"), st.Gen()
	if err := st.Update(func(tx Tx) error { return tx.Put("a", "k", []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if st.Gen("a") == a || st.Gen("b") != b || st.Gen() == all {
		t.Errorf("after a write to a: a %d->%d, b %d->%d, all %d->%d", a, st.Gen("a"), b, st.Gen("b"), all, st.Gen())
	}
	a, b, all = st.Gen("a"), st.Gen("b"), st.Gen()
	boom := errors.New("boom")
	if err := st.Update(func(tx Tx) error { _ = tx.Put("b", "k", []byte("v")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed update: %v", err)
	}
	_ = st.View(func(tx Tx) error { _, err := tx.Get("a", "k"); return err })
	if st.Gen("a") != a || st.Gen("b") != b || st.Gen() != all {
		t.Error("a failed Update or a View changed a generation")
	}
	for _, write := range []func(Tx) error{
		func(tx Tx) error { return tx.Delete("b", "k") },
		func(tx Tx) error { _, err := tx.NextSeq("b"); return err },
	} {
		b := st.Gen("b")
		if err := st.Update(write); err != nil {
			t.Fatal(err)
		}
		if st.Gen("b") == b || st.Gen("a", "b") == a+b {
			t.Errorf("a delete or sequence in b left its generation at %d", b)
		}
	}
}
