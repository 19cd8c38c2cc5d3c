// Package telemetry owns Fieldhub's wire contract and the path of a reading
// to storage: the frames devices and hubs exchange, their strict decoder and
// validator, the error codes, InfluxDB line-protocol encoding, and (in
// sub-packages) the durable spool and the InfluxDB writer.
//
// It imports no other Fieldhub package; every other package may import it.
package telemetry
