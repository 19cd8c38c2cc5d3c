package spool

import (
	"os"

	"golang.org/x/sys/unix"
)

// preallocate gives f its full size n up front (fallocate, mode 0: the
// blocks are reserved and read as zeros), so appends write inside the
// file instead of growing it.
func preallocate(f *os.File, n int64) error {
	return unix.Fallocate(int(f.Fd()), 0, 0, n)
}

// datasync makes the data written to f durable with fdatasync rather than
// fsync. That is safe here, and not only fast: fdatasync still commits
// every piece of metadata needed to read the data back (POSIX; on Linux
// that includes a file size that grew and the extents that a write into
// preallocated space turned from unwritten into written), and skips only
// what is not (mtime, ctime). A segment is preallocated, so a write
// inside it changes no size; when preallocation failed or a segment was
// cut back after a failed write, the write grows the file and fdatasync
// commits the new size with the data, as fsync would. Measured on the
// project's box (BenchmarkSync, docs/benchmarks.md): preallocation takes
// about 15 µs of CPU off each commit; fsync and fdatasync then cost the
// same within the noise, and fdatasync is never more work.
func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
