package cluster

import (
	"context"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// Registry sync: announce this instance's registry changes; reload when
// another instance announced one.

// RegistryChanged announces a registry change of this instance to the
// others and mirrors device credentials into the broker. Give it to
// devices.Options.OnChange.
func (c *Cluster) RegistryChanged(ch devices.Changed) {
	if c.connected.Load() {
		c.client.Publish(topicRegistry, 1, []byte(`{"o":"`+c.opts.ClientID+`"}`))
	}
	if c.dynsec != nil {
		c.dynsec.Changed(ch)
	}
}

func (c *Cluster) requestRefresh() {
	select {
	case c.refresh <- struct{}{}:
	default: // one is pending already: it will see this change too
	}
}

// refreshLoop reloads the registry when another instance announced a
// change, at most every refreshGap, and every RefreshEvery regardless.
func (c *Cluster) refreshLoop(ctx context.Context) {
	const refreshGap = 100 * time.Millisecond
	t := time.NewTicker(c.opts.RefreshEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.refresh:
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := c.opts.Registry.Refresh(rctx); err != nil {
			c.log.Warn("registry refresh failed", "err", err)
		}
		cancel()
		c.stats.Refreshes.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(refreshGap):
		}
	}
}
