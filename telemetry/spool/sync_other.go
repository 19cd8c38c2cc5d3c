//go:build !linux

package spool

import "os"

// preallocate does nothing where fallocate is not available: appends grow
// the segment and the sync commits its size.
func preallocate(*os.File, int64) error { return nil }

// datasync is fsync where fdatasync is not available.
func datasync(f *os.File) error { return f.Sync() }
