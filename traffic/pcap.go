package traffic

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// pcapSnaplen is the snapshot length written into pcap headers: large
// enough for jumbo frames.
const pcapSnaplen = 65535

// pcapEpoch is the timestamp of the first written packet; later packets
// are 1 µs apart. Fixed, so a written trace is byte-for-byte reproducible.
var pcapEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// WritePcap writes frames as an Ethernet pcap stream (microsecond
// timestamps, 1 µs apart from a fixed epoch).
func WritePcap(w io.Writer, frames [][]byte) error {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(pcapSnaplen, layers.LinkTypeEthernet); err != nil {
		return fmt.Errorf("pcap: write header: %w", err)
	}
	for i, f := range frames {
		if len(f) > pcapSnaplen {
			return fmt.Errorf("pcap: packet %d is %d bytes, above the snapshot length %d", i, len(f), pcapSnaplen)
		}
		ci := gopacket.CaptureInfo{
			Timestamp:     pcapEpoch.Add(time.Duration(i) * time.Microsecond),
			CaptureLength: len(f),
			Length:        len(f),
		}
		if err := pw.WritePacket(ci, f); err != nil {
			return fmt.Errorf("pcap: write packet %d: %w", i, err)
		}
	}
	return nil
}

// ReadPcap reads every frame of a pcap stream with an Ethernet link type.
// Packets captured shorter than they were on the wire are refused: a
// truncated frame would silently change what an NF does with it.
func ReadPcap(r io.Reader) ([][]byte, error) {
	pr, err := pcapgo.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("pcap: not a pcap stream (pcapng is not supported): %w", err)
	}
	if lt := pr.LinkType(); lt != layers.LinkTypeEthernet {
		return nil, fmt.Errorf("pcap: link type %s, want Ethernet", lt)
	}
	var frames [][]byte
	for i := 0; ; i++ {
		data, ci, err := pr.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return frames, nil
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("pcap: packet %d: stream ends inside the packet (truncated file)", i)
			}
			return nil, fmt.Errorf("pcap: packet %d: %w", i, err)
		}
		if ci.CaptureLength < ci.Length {
			return nil, fmt.Errorf("pcap: packet %d: captured %d of %d bytes (snapshot length too small)", i, ci.CaptureLength, ci.Length)
		}
		frames = append(frames, data)
	}
}

// WritePcapFile writes frames to a new pcap file at path.
func WritePcapFile(path string, frames [][]byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WritePcap(f, frames); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// ReadPcapFile reads every frame of the pcap file at path.
func ReadPcapFile(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	frames, err := ReadPcap(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return frames, nil
}
