package firmwaresim

import (
	"math"
	"math/rand/v2"
	"time"
)

// sensor produces plausible readings for one device: temperature with a
// daily cycle and noise, humidity as a bounded random walk, a draining
// battery, a counter, and an occasional spike.
type sensor struct {
	rng      *rand.Rand
	phase    float64
	baseTemp float64
	hum      float64
	batt     float64
	count    float64
}

func newSensor(seed uint64) *sensor {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return &sensor{
		rng:      rng,
		phase:    rng.Float64() * 2 * math.Pi,
		baseTemp: 15 + rng.Float64()*10,
		hum:      40 + rng.Float64()*20,
		batt:     3.9 + rng.Float64()*0.3,
	}
}

const day = 24 * time.Hour

// read returns the metrics at t.
func (s *sensor) read(t time.Time) map[string]float64 {
	frac := float64(t.UnixMilli()%day.Milliseconds()) / float64(day.Milliseconds())
	temp := s.baseTemp + 6*math.Sin(2*math.Pi*frac+s.phase) + s.rng.NormFloat64()*0.2
	if s.rng.Float64() < 0.002 {
		temp += 15 + s.rng.Float64()*10 // a spike: a door opened, a sensor glitch
	}
	s.hum = min(95, max(10, s.hum+s.rng.NormFloat64()*0.5))
	s.batt = max(3.0, s.batt-0.00002-s.rng.Float64()*0.00002)
	s.count++
	return map[string]float64{
		"temp":     math.Round(temp*100) / 100,
		"humidity": math.Round(s.hum*10) / 10,
		"battery":  math.Round(s.batt*1000) / 1000,
		"count":    s.count,
	}
}
