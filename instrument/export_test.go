package instrument

// SetSkipRecording makes variants built afterwards sample without
// recording: the benchmarks use it to separate the sampler's cost from
// the heat map's. Not safe for concurrent use with Instrument.
func SetSkipRecording(skip bool) { skipRecording = skip }
