// Package commands owns device commands: their records and the Store
// interface that persists them, the per-device queue and status
// lifecycle, delivery to the device's session (or, through a Router, to
// another hub instance), redelivery, the ttl/timeout clock, waiters and
// HTTP long polls.
//
// One goroutine (Service.Run) owns the active set, the waiters and the
// pollers; every other goroutine reaches them through its bounded request
// queue (news from other instances: through a bounded set it drains), so
// no lock is held across store I/O, fan-out or a delivery.
//
// It may import devices (identity: does a device exist, is a token still
// valid; the shared error values) and telemetry (the wire form of a
// command). Its store implementations live in boltstore and pgstore, the
// only places besides devices that touch bbolt and pgx.
package commands
